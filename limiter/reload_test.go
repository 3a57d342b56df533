package limiter

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
)

const reloadPolicy = `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: reload}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: 2}]
    breaker: {recovery: Manual}
`

// TestReloadCarriesOpenBreakersOverAWindowsEdit: an edit of a budget's
// windows restarts its counts but never silently closes an Open Manual
// breaker, on either store; the reload line names what carried over; only an
// override closes it, and reverting the edit brings back no stale state.
func TestReloadCarriesOpenBreakersOverAWindowsEdit(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	stores := []struct {
		name string
		new  func(t *testing.T, clk *clocktesting.FakeClock) Store
	}{
		{"memory", func(t *testing.T, clk *clocktesting.FakeClock) Store { return NewMemoryStore(MemoryConfig{Clock: clk}) }},
		{"redis", redisFactory(singleOpts(srv), nil)},
	}
	for _, sc := range stores {
		t.Run(sc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(testEpoch)
			var logs lockedBuffer
			e, err := NewEngine(EngineConfig{Policy: parse(t, reloadPolicy), Store: sc.new(t, clk), Clock: clk,
				Fallback: NewMemoryStore(MemoryConfig{Clock: clk}), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			for i := 0; i < 3; i++ { // the 3rd trips prod's Manual breaker
				e.Decide(ctx, podDelete("prod", "p"))
			}
			e.Decide(ctx, podDelete("dev", "p"))
			edited := strings.Replace(reloadPolicy, "[{window: 1m, limit: 2}]", "[{window: 1m, limit: 3}, {window: 1h, limit: 10}]", 1)
			e.SetPolicy(parse(t, edited))
			clk.Step(time.Minute)
			d := e.Decide(ctx, podDelete("prod", "p"))
			if d.Allowed || d.Code != http.StatusForbidden || !strings.Contains(d.Message, "1m: 0/3, 1h: 0/10") {
				t.Fatalf("prod after the edit: %+v, want its Open Manual breaker carried over (403) with fresh counts", d)
			}
			if d := e.Decide(ctx, podDelete("dev", "p")); !d.Allowed {
				t.Fatalf("dev after the edit: %s, want admitted (its breaker was Closed)", d.Message)
			}
			if !strings.Contains(logs.String(), `breakersCarriedOver="[pod-deletes namespace=prod]"`) {
				t.Errorf("the reload line does not name the breaker carried over:\n%s", logs.String())
			}
			if err := e.ResetBreakers(ctx, &Override{Name: "o", Budgets: []string{"pod-deletes"}, Namespaces: []string{"prod"}, ResetBreaker: true}); err != nil {
				t.Fatal(err)
			}
			if d := e.Decide(ctx, podDelete("prod", "p")); !d.Allowed {
				t.Fatalf("prod after the override: %s", d.Message)
			}
			e.SetPolicy(parse(t, reloadPolicy)) // revert: the old windows' state is gone
			if d := e.Decide(ctx, podDelete("prod", "p")); !d.Allowed {
				t.Fatalf("prod after reverting the edit: %s, want admitted (no stale Open state)", d.Message)
			}
		})
	}
}

// TestMemorySweepJudgesWithTheCurrentSpec: after a reload that keeps a
// budget's windows but makes its Auto breaker Manual, the sweep must judge
// idleness with the Manual breaker (Open until an override), not with the
// Auto spec the table was created with (which would have closed it).
func TestMemorySweepJudgesWithTheCurrentSpec(t *testing.T) {
	clk := clocktesting.NewFakeClock(testEpoch)
	ms := NewMemoryStore(MemoryConfig{Clock: clk})
	auto := strings.Replace(reloadPolicy, "{recovery: Manual}", "{recovery: Auto, cooldown: 1m, halfOpenLimit: 1}", 1)
	e, err := NewEngine(EngineConfig{Policy: parse(t, auto), Store: ms, Clock: clk, Fallback: NewMemoryStore(MemoryConfig{Clock: clk})})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		e.Decide(ctx, podDelete("prod", "p"))
	}
	e.SetPolicy(parse(t, reloadPolicy)) // same windows (same ID), Manual breaker
	clk.Step(time.Hour)
	ms.Sweep()
	if d := e.Decide(ctx, podDelete("prod", "p")); d.Allowed || d.Code != http.StatusForbidden {
		t.Fatalf("after a sweep: %+v, want the breaker still Open under Manual (403)", d)
	}
}
