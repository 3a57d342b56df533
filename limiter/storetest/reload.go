package storetest

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/internal/logtest"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/internal/limitertest"
)

// testReloadCarriesOpenBreakers: an edit of a budget's
// windows restarts its counts but never silently closes an Open Manual
// breaker; the reload line names what carried over; only an
// override closes it, and reverting the edit brings back no stale state.
func testReloadCarriesOpenBreakers(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	var logs logtest.Buffer
	e, err := limiter.NewEngine(limiter.EngineConfig{Policy: limitertest.Parse(t, limitertest.ReloadPolicy), Store: newStore(t, clk), Clock: clk,
		Fallback: limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk}), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 3; i++ { // the 3rd trips prod's Manual breaker
		e.Decide(ctx, PodDelete("prod", "p"))
	}
	e.Decide(ctx, PodDelete("dev", "p"))
	edited := strings.Replace(limitertest.ReloadPolicy, "[{window: 1m, limit: 2}]", "[{window: 1m, limit: 3}, {window: 1h, limit: 10}]", 1)
	Reload(t, e, limitertest.Parse(t, edited))
	clk.Step(time.Minute)
	d := e.Decide(ctx, PodDelete("prod", "p"))
	if d.Allowed || d.Code != http.StatusForbidden || !strings.Contains(d.Message, "1m: 0/3, 1h: 0/10") {
		t.Fatalf("prod after the edit: %+v, want its Open Manual breaker carried over (403) with fresh counts", d)
	}
	if d := e.Decide(ctx, PodDelete("dev", "p")); !d.Allowed {
		t.Fatalf("dev after the edit: %s, want admitted (its breaker was Closed)", d.Message)
	}
	if !strings.Contains(logs.String(), `breakersCarriedOver="[pod-deletes namespace=prod]"`) {
		t.Errorf("the reload line does not name the breaker carried over:\n%s", logs.String())
	}
	if err := e.ResetBreakers(ctx, &limiter.Override{Name: "o", Budgets: []string{"pod-deletes"}, Namespaces: []string{"prod"}, ResetBreaker: true}); err != nil {
		t.Fatal(err)
	}
	if d := e.Decide(ctx, PodDelete("prod", "p")); !d.Allowed {
		t.Fatalf("prod after the override: %s", d.Message)
	}
	Reload(t, e, limitertest.Parse(t, limitertest.ReloadPolicy)) // revert: the old windows' state is gone
	if d := e.Decide(ctx, PodDelete("prod", "p")); !d.Allowed {
		t.Fatalf("prod after reverting the edit: %s, want admitted (no stale Open state)", d.Message)
	}
}
