package limiter

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter/internal/limitertest"
	"github.com/kubedefender/kubedefender/policy"
)

func TestMemoryStoreBoundsKeys(t *testing.T) {
	clk := clocktesting.NewFakeClock(testEpoch)
	s := NewMemoryStore(MemoryConfig{Clock: clk, MaxKeysPerRule: 64})
	budget := testSpec([]WindowSpec{{time.Minute, 1000}}, BreakerSpec{})
	rate := &RateSpec{Name: "r", ID: "r@bound", QPS: 1, Burst: 1, Interval: time.Second}
	for i := 0; i < 10000; i++ {
		key := fmt.Sprintf("userAgent=flood-%d", i)
		take(t, s, true, BudgetCheck{Spec: budget, Key: key})
		if err := s.Rates(context.Background(), &RateBatch{Checks: []RateCheck{{Spec: rate, Key: key}}}); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.BudgetKeys > 64 || st.RateKeys > 64 {
		t.Fatalf("a flood of 10000 keys grew the store to %d budget / %d rate keys, want at most 64 each", st.BudgetKeys, st.RateKeys)
	}
	if st.Overflowed == 0 {
		t.Fatal("no request was counted on the overflow key")
	}
	// The overflow key limits the flood together: with burst 1 and no time passing, new keys are denied.
	b := &RateBatch{Checks: []RateCheck{{Spec: rate, Key: "userAgent=flood-new"}}}
	if err := s.Rates(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if b.Results[0].Allowed {
		t.Fatal("a new key in a full rule got a fresh bucket instead of the shared overflow one")
	}
}

func TestMemoryStoreSweepForgetsIdleKeys(t *testing.T) {
	clk := clocktesting.NewFakeClock(testEpoch)
	s := NewMemoryStore(MemoryConfig{Clock: clk})
	closed := testSpec([]WindowSpec{{time.Minute, 5}, {time.Hour, 10}}, BreakerSpec{})
	manual := testSpec([]WindowSpec{{time.Minute, 1}}, BreakerSpec{Enabled: true, Manual: true})
	rate := &RateSpec{Name: "r", ID: "r@sweep", QPS: 10, Burst: 10, Interval: 100 * time.Millisecond}
	for i := 0; i < 100; i++ {
		take(t, s, true, BudgetCheck{Spec: closed, Key: fmt.Sprint(i)})
		_ = s.Rates(context.Background(), &RateBatch{Checks: []RateCheck{{Spec: rate, Key: fmt.Sprint(i)}}})
	}
	take(t, s, true, BudgetCheck{Spec: manual, Key: "tripped"})
	take(t, s, true, BudgetCheck{Spec: manual, Key: "tripped"})

	clk.Step(30 * time.Minute)
	s.Sweep()
	if got := s.Stats(); got.BudgetKeys != 101 || got.RateKeys != 0 {
		t.Fatalf("after 30m: %+v, want the 100 budget keys kept (their 1h window is still used), the manual breaker kept and rate keys gone", got)
	}
	clk.Step(31 * time.Minute)
	s.Sweep()
	if got := s.Stats(); got.BudgetKeys != 1 {
		t.Fatalf("after the longest window: %d budget keys, want only the open Manual breaker", got.BudgetKeys)
	}
	if res := take(t, s, true, BudgetCheck{Spec: manual, Key: "tripped"}).Results[0]; res.State != Open {
		t.Fatalf("the sweep lost an open Manual breaker: %+v", res)
	}
}

func TestMemoryStoreTimeNeverRunsBackwards(t *testing.T) {
	clk := clocktesting.NewFakeClock(testEpoch)
	s := NewMemoryStore(MemoryConfig{Clock: clk})
	spec := testSpec([]WindowSpec{{time.Minute, 2}}, BreakerSpec{})
	c := BudgetCheck{Spec: spec, Key: "k"}
	take(t, s, true, c)
	take(t, s, true, c)
	clk.SetTime(testEpoch.Add(-time.Hour)) // the clock steps back
	if take(t, s, true, c).Admitted {
		t.Fatal("a clock step back opened room the log says is used")
	}
}

func TestMemoryStoreRetainDropsRemovedRules(t *testing.T) {
	clk := clocktesting.NewFakeClock(testEpoch)
	s := NewMemoryStore(MemoryConfig{Clock: clk})
	keep := testSpec([]WindowSpec{{time.Minute, 1}}, BreakerSpec{})
	drop := testSpec([]WindowSpec{{time.Minute, 1}}, BreakerSpec{})
	take(t, s, true, BudgetCheck{Spec: keep, Key: "k"})
	take(t, s, true, BudgetCheck{Spec: drop, Key: "k"})
	s.Retain(map[string]bool{keep.ID: true}, nil)
	if take(t, s, true, BudgetCheck{Spec: keep, Key: "k"}).Admitted {
		t.Fatal("a retained rule lost its counters")
	}
	if !take(t, s, true, BudgetCheck{Spec: drop, Key: "k"}).Admitted {
		t.Fatal("a dropped rule kept its counters")
	}
}

// TestMemoryStoreRateKeysSurviveTheReuseOfTheirLookupString: found by the
// random-policy property test. Assigning to an existing map key stores the
// lookup string as the key; the engine's keys live in a pooled arena that the
// next request overwrites, so a client's bucket was lost (its next request
// got a full bucket) once a request laid its keys out differently.
func TestMemoryStoreRateKeysSurviveTheReuseOfTheirLookupString(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{Policy: parse(t, `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: ua}
spec:
  rateLimits:
  - {name: per-user, match: {verbs: [list]}, per: [user], qps: 1000, burst: 1000}
  - {name: per-agent, match: {verbs: [list]}, per: [userAgent], qps: 0.001, burst: 1}
`)})
	list := func(user string) Decision {
		return e.Decide(context.Background(), &Attributes{Attributes: policy.Attributes{Verb: "list", Resource: "pods", User: user, UserAgent: "agent/a"}, Front: FrontProxy})
	}
	if d := list("bob"); !d.Allowed {
		t.Fatalf("first request: %s", d.Message)
	}
	list("bob") // denied by per-agent: its map entry is updated with the arena's key
	// alice's key is longer than bob's: the agent key now sits elsewhere in the arena.
	if d := list("alice"); d.Allowed {
		t.Fatal("agent/a got a full bucket again: its stored key was overwritten by the next request's keys")
	}
}

// TestMemorySweepJudgesWithTheCurrentSpec: after a reload that keeps a
// budget's windows but makes its Auto breaker Manual, the sweep must judge
// idleness with the Manual breaker (Open until an override), not with the
// Auto spec the table was created with (which would have closed it).
func TestMemorySweepJudgesWithTheCurrentSpec(t *testing.T) {
	clk := clocktesting.NewFakeClock(testEpoch)
	ms := NewMemoryStore(MemoryConfig{Clock: clk})
	auto := strings.Replace(limitertest.ReloadPolicy, "{recovery: Manual}", "{recovery: Auto, cooldown: 1m, halfOpenLimit: 1}", 1)
	e, err := NewEngine(EngineConfig{Policy: parse(t, auto), Store: ms, Clock: clk, Fallback: NewMemoryStore(MemoryConfig{Clock: clk})})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		e.Decide(ctx, podDelete("prod", "p"))
	}
	setPolicy(t, e, parse(t, limitertest.ReloadPolicy)) // same windows (same ID), Manual breaker
	clk.Step(time.Hour)
	ms.Sweep()
	if d := e.Decide(ctx, podDelete("prod", "p")); d.Allowed || d.Code != http.StatusForbidden {
		t.Fatalf("after a sweep: %+v, want the breaker still Open under Manual (403)", d)
	}
}
