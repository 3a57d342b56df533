package storetest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
	"pgregory.net/rapid"

	"github.com/kubedefender/kubedefender/limiter"
)

// NewStore builds a store whose time is clk, with no state from other tests
// (a fresh store, or a fresh key prefix on a shared server).
type NewStore func(t *testing.T, clk *clocktesting.FakeClock) limiter.Store

// Run is the contract every Store implementation passes: the semantics of
// budgets, breakers, rate limits, charge-once and costs, then an engine on
// the store carrying breakers over a reload and resetting them by scope.
func Run(t *testing.T, newStore NewStore) {
	t.Run("no window admits more than its limit at any alignment, and denials take nothing", func(t *testing.T) {
		testSlidingWindowProperty(t, newStore)
	})
	t.Run("a batch is all or nothing across budgets", func(t *testing.T) {
		testAllOrNothing(t, newStore)
	})
	t.Run("retry-after says when the denying window frees up", func(t *testing.T) {
		testRetryAfter(t, newStore)
	})
	t.Run("breakers", func(t *testing.T) { testBreakers(t, newStore) })
	t.Run("dry run judges and changes nothing", func(t *testing.T) { testDryRun(t, newStore) })
	t.Run("shadow checks never deny and are charged when they have room", func(t *testing.T) { testShadow(t, newStore) })
	t.Run("rate limits are token buckets", func(t *testing.T) { testRates(t, newStore) })
	t.Run("keys are independent", func(t *testing.T) { testKeysIndependent(t, newStore) })
	t.Run("inspection reports the busiest keys first", func(t *testing.T) { testInspect(t, newStore) })
	t.Run("a repeat of a charged request is admitted and charges nothing", func(t *testing.T) { testChargeOnce(t, newStore) })
	t.Run("checks may cost more than one token", func(t *testing.T) { testCosts(t, newStore) })
	t.Run("a reload carries open breakers over a windows edit", func(t *testing.T) { testReloadCarriesOpenBreakers(t, newStore) })
	t.Run("a breaker reset resets only the keys its scope covers", func(t *testing.T) { testResetIsScoped(t, newStore) })
}

func testChargeOnce(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	s := newStore(t, clk)
	spec := Spec([]limiter.WindowSpec{{Length: time.Hour, Limit: 2}}, limiter.BreakerSpec{Enabled: true, Manual: true})
	once := func(id string, commit bool) *limiter.BudgetBatch {
		t.Helper()
		b := &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: "k"}}, Commit: commit, Once: id, OnceTTL: 2 * time.Minute}
		if err := s.Budgets(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	if b := once("pod-uid-1", true); !b.Admitted || b.Repeat {
		t.Fatalf("first charge: admitted=%v repeat=%v", b.Admitted, b.Repeat)
	}
	for i := 0; i < 3; i++ { // the API server's repeated validations of one delete
		if b := once("pod-uid-1", true); !b.Admitted || !b.Repeat {
			t.Fatalf("repeat %d: admitted=%v repeat=%v, want a free repeat", i, b.Admitted, b.Repeat)
		}
	}
	if b := once("pod-uid-2", true); !b.Admitted || b.Repeat || b.Results[0].Used[0] != 2 {
		t.Fatalf("second object: %+v, want charged as the 2nd of 2", b.Results)
	}
	b := once("pod-uid-3", true) // trips the breaker
	if b.Admitted {
		t.Fatal("third object admitted past the limit")
	}
	if b := once("pod-uid-3", true); b.Repeat || b.Admitted {
		t.Fatal("a denied request was remembered as charged")
	}
	if b := once("pod-uid-4", false); b.Repeat {
		t.Fatal("a dry run was treated as a repeat")
	}
	clk.Step(2*time.Minute + time.Second)
	if b := once("pod-uid-1", true); b.Repeat {
		t.Fatal("a charge was remembered past its TTL")
	}
}

func testInspect(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	s := newStore(t, clk)
	insp, ok := s.(limiter.Inspector)
	if !ok {
		t.Fatalf("%T does not implement Inspector", s)
	}
	ctx := context.Background()
	spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 3}, {Length: time.Hour, Limit: 10}}, limiter.BreakerSpec{Enabled: true, Manual: true})
	for i := 0; i < 4; i++ { // trips namespace=a
		Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "namespace=a"})
	}
	Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "namespace=b"})
	keys, err := insp.InspectBudget(ctx, spec, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].Key != "namespace=a" || keys[0].State != limiter.Open || keys[0].Used[0] != 3 || keys[1].Key != "namespace=b" || keys[1].Used[0] != 1 || keys[1].State != limiter.Closed {
		t.Fatalf("InspectBudget = %+v, want namespace=a Open 3/3 first, then namespace=b Closed 1/3", keys)
	}
	if keys, _ := insp.InspectBudget(ctx, spec, 1); len(keys) != 1 {
		t.Fatalf("limit 1 returned %d keys", len(keys))
	}

	n := specSeq.Add(1)
	rate := &limiter.RateSpec{Name: fmt.Sprintf("r%d", n), ID: fmt.Sprintf("r%d@test", n), QPS: 1, Burst: 4, Interval: time.Second}
	for _, k := range []string{"hot", "hot", "hot", "warm"} {
		if err := s.Rates(ctx, &limiter.RateBatch{Checks: []limiter.RateCheck{{Spec: rate, Key: k}}}); err != nil {
			t.Fatal(err)
		}
	}
	hot, err := insp.HottestRates(ctx, rate, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(hot) != 2 || hot[0].Key != "hot" || hot[0].Tokens != 1 || hot[1].Key != "warm" || hot[1].Tokens != 3 {
		t.Fatalf("HottestRates = %+v, want hot with 1 token left, then warm with 3", hot)
	}
}

var specSeq atomic.Int64

// Spec returns a budget spec with a unique ID, so tests never share state.
func Spec(windows []limiter.WindowSpec, br limiter.BreakerSpec) *limiter.BudgetSpec {
	n := specSeq.Add(1)
	return &limiter.BudgetSpec{Name: fmt.Sprintf("b%d", n), ID: fmt.Sprintf("b%d@test", n), Windows: windows, Breaker: br}
}

// Fataler is what Take needs of *testing.T and *rapid.T.
type Fataler interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Take judges one batch of checks on s (charging them when commit is set)
// and fails the test on an error or a wrong number of results.
func Take(t Fataler, s limiter.Store, commit bool, checks ...limiter.BudgetCheck) *limiter.BudgetBatch {
	t.Helper()
	b := &limiter.BudgetBatch{Checks: checks, Commit: commit}
	if err := s.Budgets(context.Background(), b); err != nil {
		t.Fatalf("Budgets: %v", err)
	}
	if len(b.Results) != len(checks) {
		t.Fatalf("Budgets returned %d results for %d checks", len(b.Results), len(checks))
	}
	return b
}

// Epoch is where the suite's fake clocks start.
var Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// drawWindowSpecs draws 1 to most windows for a budget: each longer than the
// one before by 1s to 2m, its limit larger by limitStep (drawn from minStep
// to maxStep), and at least 1.
func drawWindowSpecs(rt *rapid.T, most, minStep, maxStep int) []limiter.WindowSpec {
	nw := rapid.IntRange(1, most).Draw(rt, "windows")
	var ws []limiter.WindowSpec
	length, limit := time.Duration(0), int64(0)
	for i := 0; i < nw; i++ {
		length += time.Duration(rapid.IntRange(1, 120).Draw(rt, "lengthStepSeconds")) * time.Second
		limit += int64(rapid.IntRange(minStep, maxStep).Draw(rt, "limitStep"))
		if limit == 0 {
			limit = 1
		}
		ws = append(ws, limiter.WindowSpec{Length: length, Limit: limit})
	}
	return ws
}

func testSlidingWindowProperty(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	s := newStore(t, clk)
	rapid.Check(t, func(rt *rapid.T) {
		ws := drawWindowSpecs(rt, 4, 0, 6)
		nw, length := len(ws), ws[len(ws)-1].Length
		spec := Spec(ws, limiter.BreakerSpec{})
		now := Epoch.Add(time.Duration(specSeq.Load()) * 24 * time.Hour)
		var admitted []time.Time
		n := rapid.IntRange(1, 80).Draw(rt, "requests")
		for i := 0; i < n; i++ {
			// Arrivals cluster (same instant), trickle, or jump past windows.
			switch rapid.IntRange(0, 3).Draw(rt, "gapKind") {
			case 0:
			case 1:
				now = now.Add(time.Duration(rapid.IntRange(1, 1000).Draw(rt, "gapMs")) * time.Millisecond)
			case 2:
				now = now.Add(time.Duration(rapid.Int64Range(1, int64(length/time.Millisecond)).Draw(rt, "gapWindowMs")) * time.Millisecond)
			default:
				now = now.Add(ws[rapid.IntRange(0, nw-1).Draw(rt, "exactWindow")].Length)
			}
			clk.SetTime(now)
			// The model: room in every window (now-W, now].
			want := true
			for _, w := range ws {
				c := int64(0)
				for _, a := range admitted {
					if a.After(now.Add(-w.Length)) {
						c++
					}
				}
				if c >= w.Limit {
					want = false
				}
			}
			b := Take(rt, s, true, limiter.BudgetCheck{Spec: spec, Key: "k"})
			if got := b.Results[0].Allowed; got != want {
				rt.Fatalf("request %d at +%s: allowed=%v, the exact sliding log says %v (windows %v, admitted %d)", i, now.Sub(Epoch), got, want, ws, len(admitted))
			}
			if b.Admitted {
				admitted = append(admitted, now)
			}
		}
		// Every span [s, s+W) holds at most L admissions: check spans starting at each admission.
		for _, w := range ws {
			for i, start := range admitted {
				c := int64(0)
				for _, a := range admitted[i:] {
					if a.Before(start.Add(w.Length)) {
						c++
					}
				}
				if c > w.Limit {
					rt.Fatalf("window %s admitted %d > limit %d in the span starting at +%s", w.Length, c, w.Limit, start.Sub(Epoch))
				}
			}
		}
	})
}

func testAllOrNothing(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	s := newStore(t, clk)
	roomy := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 100}}, limiter.BreakerSpec{})
	tight := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 2}}, limiter.BreakerSpec{})
	for i := 0; i < 2; i++ {
		if b := Take(t, s, true, limiter.BudgetCheck{Spec: roomy, Key: "k"}, limiter.BudgetCheck{Spec: tight, Key: "k"}); !b.Admitted {
			t.Fatalf("request %d denied with room in both budgets", i)
		}
	}
	for i := 0; i < 5; i++ {
		b := Take(t, s, true, limiter.BudgetCheck{Spec: roomy, Key: "k"}, limiter.BudgetCheck{Spec: tight, Key: "k"})
		if b.Admitted || !b.Results[0].Allowed || b.Results[1].Allowed {
			t.Fatalf("with the tight budget exhausted: admitted=%v results=%+v", b.Admitted, b.Results)
		}
	}
	// The roomy budget was charged only for the two admitted requests.
	b := Take(t, s, false, limiter.BudgetCheck{Spec: roomy, Key: "k"})
	if got := b.Results[0].Used[0]; got != 2 {
		t.Fatalf("roomy budget used = %d after 2 admitted and 5 denied requests, want 2", got)
	}
}

func testRetryAfter(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	s := newStore(t, clk)
	spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 3}, {Length: time.Hour, Limit: 4}}, limiter.BreakerSpec{})
	for _, at := range []time.Duration{0, 10 * time.Second, 20 * time.Second} {
		clk.SetTime(Epoch.Add(at))
		if !Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k"}).Admitted {
			t.Fatalf("request at +%s denied", at)
		}
	}
	clk.SetTime(Epoch.Add(30 * time.Second))
	res := Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k"}).Results[0]
	if res.Allowed || res.Reason != limiter.WindowExhausted || res.Window != 0 || res.RetryAfter != 30*time.Second || res.Used[0] != 3 {
		t.Fatalf("at +30s: got %+v, want the 1m window exhausted with 3 used, free in 30s", res)
	}
	clk.SetTime(Epoch.Add(60 * time.Second))
	if !Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k"}).Admitted {
		t.Fatal("at +60s the first admission has left the 1m window; want admitted")
	}
	clk.SetTime(Epoch.Add(2 * time.Minute))
	res = Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k"}).Results[0]
	if res.Allowed || res.Window != 1 || res.RetryAfter != time.Hour-2*time.Minute {
		t.Fatalf("at +2m the 1h window holds 4/4: got %+v, want window 1 free in 58m", res)
	}
}

func testBreakers(t *testing.T, newStore NewStore) {
	cases := []struct {
		name string
		run  func(t *testing.T, s limiter.Store, clk *clocktesting.FakeClock)
	}{
		{"a Manual breaker trips on exhaustion and stays open after the window until reset", func(t *testing.T, s limiter.Store, clk *clocktesting.FakeClock) {
			spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 3}}, limiter.BreakerSpec{Enabled: true, Manual: true})
			c := limiter.BudgetCheck{Spec: spec, Key: "ns=a"}
			for i := 0; i < 3; i++ {
				if !Take(t, s, true, c).Admitted {
					t.Fatalf("request %d denied", i)
				}
			}
			res := Take(t, s, true, c).Results[0]
			if res.Allowed || res.Reason != limiter.WindowExhausted || res.Prev != limiter.Closed || res.State != limiter.Open || res.RetryAfter != 0 {
				t.Fatalf("4th request: got %+v, want a trip Closed→Open with no retry", res)
			}
			clk.Step(2 * time.Hour)
			res = Take(t, s, true, c).Results[0]
			if res.Allowed || res.Reason != limiter.BreakerIsOpen || res.State != limiter.Open {
				t.Fatalf("2h later: got %+v, want still Open", res)
			}
			if err := s.ResetBudget(context.Background(), spec, "ns=a"); err != nil {
				t.Fatal(err)
			}
			if res := Take(t, s, true, c).Results[0]; !res.Allowed || res.State != limiter.Closed {
				t.Fatalf("after reset: got %+v, want allowed and Closed", res)
			}
		}},
		{"an Auto breaker reloaded as Manual while HalfOpen is Closed, never stuck HalfOpen with a negative retry", func(t *testing.T, s limiter.Store, clk *clocktesting.FakeClock) {
			auto := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1}}, limiter.BreakerSpec{Enabled: true, Cooldown: time.Minute, HalfOpenLimit: 1})
			manual := *auto // same name and windows, so the same ID: the state is kept
			manual.Breaker = limiter.BreakerSpec{Enabled: true, Manual: true}
			Take(t, s, true, limiter.BudgetCheck{Spec: auto, Key: "k"})
			if res := Take(t, s, true, limiter.BudgetCheck{Spec: auto, Key: "k"}).Results[0]; res.State != limiter.Open {
				t.Fatalf("trip: %+v", res)
			}
			clk.Step(time.Minute + time.Second) // cooldown over: HalfOpen, and a probe is admitted
			if res := Take(t, s, true, limiter.BudgetCheck{Spec: auto, Key: "k"}).Results[0]; res.State != limiter.HalfOpen || !res.Allowed {
				t.Fatalf("after the cooldown: %+v, want a probe admitted HalfOpen", res)
			}
			clk.Step(time.Minute + time.Second) // the window has room again; the reload happens now
			for i := 0; i < 3; i++ {
				res := Take(t, s, true, limiter.BudgetCheck{Spec: &manual, Key: "k"}).Results[0]
				if res.RetryAfter < 0 || res.State == limiter.HalfOpen {
					t.Fatalf("request %d under Manual: %+v, want no HalfOpen and no negative retry", i, res)
				}
				if i == 0 && (!res.Allowed || res.State != limiter.Closed) {
					t.Fatalf("first request under Manual: %+v, want allowed and Closed (the window has room)", res)
				}
				if i > 0 && (res.Allowed || res.State != limiter.Open || res.RetryAfter != 0) {
					t.Fatalf("request %d under Manual: %+v, want the exhausted window to open the Manual breaker", i, res)
				}
			}
		}},
		{"an Auto breaker goes Open, HalfOpen with a probe quota, then Closed", func(t *testing.T, s limiter.Store, clk *clocktesting.FakeClock) {
			spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 3}}, limiter.BreakerSpec{Enabled: true, Cooldown: 10 * time.Minute, HalfOpenLimit: 2})
			c := limiter.BudgetCheck{Spec: spec, Key: "k"}
			for i := 0; i < 3; i++ {
				Take(t, s, true, c)
			}
			if res := Take(t, s, true, c).Results[0]; res.State != limiter.Open || res.RetryAfter != 10*time.Minute {
				t.Fatalf("trip: got %+v, want Open with retry after the 10m cooldown", res)
			}
			clk.Step(4 * time.Minute)
			if res := Take(t, s, true, c).Results[0]; res.Allowed || res.Reason != limiter.BreakerIsOpen || res.RetryAfter != 6*time.Minute {
				t.Fatalf("at +4m: got %+v, want Open, retry in 6m", res)
			}
			clk.Step(6 * time.Minute)
			for i := 0; i < 2; i++ {
				res := Take(t, s, true, c).Results[0]
				if !res.Allowed || res.State != limiter.HalfOpen {
					t.Fatalf("probe %d at +10m: got %+v, want allowed while HalfOpen", i, res)
				}
			}
			if res := Take(t, s, true, c).Results[0]; res.Allowed || res.Reason != limiter.HalfOpenFull {
				t.Fatalf("3rd probe: got %+v, want denied, half-open quota used", res)
			}
			clk.Step(10 * time.Minute)
			if res := Take(t, s, true, c).Results[0]; !res.Allowed || res.State != limiter.Closed {
				t.Fatalf("a cooldown later without exhaustion: got %+v, want Closed", res)
			}
		}},
		{"exhaustion while HalfOpen opens the breaker again", func(t *testing.T, s limiter.Store, clk *clocktesting.FakeClock) {
			spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 2}}, limiter.BreakerSpec{Enabled: true, Cooldown: time.Minute, HalfOpenLimit: 5})
			c := limiter.BudgetCheck{Spec: spec, Key: "k"}
			Take(t, s, true, c)
			Take(t, s, true, c)
			Take(t, s, true, c) // trips
			clk.Step(time.Minute)
			for i := 0; i < 2; i++ {
				if res := Take(t, s, true, c).Results[0]; !res.Allowed || res.State != limiter.HalfOpen {
					t.Fatalf("probe %d: got %+v", i, res)
				}
			}
			res := Take(t, s, true, c).Results[0]
			if res.Allowed || res.Reason != limiter.WindowExhausted || res.Prev != limiter.HalfOpen || res.State != limiter.Open {
				t.Fatalf("exhaustion while HalfOpen: got %+v, want HalfOpen→Open", res)
			}
			if res := Take(t, s, true, c).Results[0]; res.Reason != limiter.BreakerIsOpen {
				t.Fatalf("after re-trip: got %+v, want Open", res)
			}
		}},
		{"without a breaker an exhausted window only denies until it refills", func(t *testing.T, s limiter.Store, clk *clocktesting.FakeClock) {
			spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1}}, limiter.BreakerSpec{})
			c := limiter.BudgetCheck{Spec: spec, Key: "k"}
			Take(t, s, true, c)
			if res := Take(t, s, true, c).Results[0]; res.Allowed || res.State != limiter.Closed {
				t.Fatalf("got %+v, want denied and still Closed", res)
			}
			clk.Step(time.Minute)
			if !Take(t, s, true, c).Admitted {
				t.Fatal("after the window: want admitted")
			}
		}},
		{"a breaker removed by a reload denies nothing any more", func(t *testing.T, s limiter.Store, clk *clocktesting.FakeClock) {
			spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1}}, limiter.BreakerSpec{Enabled: true, Manual: true})
			c := limiter.BudgetCheck{Spec: spec, Key: "k"}
			Take(t, s, true, c)
			Take(t, s, true, c) // trips
			noBreaker := *spec
			noBreaker.Breaker = limiter.BreakerSpec{} // same name and windows, so the same ID and state
			clk.Step(time.Minute)
			if res := Take(t, s, true, limiter.BudgetCheck{Spec: &noBreaker, Key: "k"}).Results[0]; !res.Allowed || res.State != limiter.Closed {
				t.Fatalf("after the breaker was removed: %+v, want allowed and Closed", res)
			}
		}},
		{"resetting every key of a budget closes all its breakers", func(t *testing.T, s limiter.Store, clk *clocktesting.FakeClock) {
			spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1}}, limiter.BreakerSpec{Enabled: true, Manual: true})
			for _, k := range []string{"a", "b"} {
				Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: k})
				Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: k})
			}
			if err := s.ResetBudget(context.Background(), spec, limiter.AllKeys); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"a", "b"} {
				if !Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: k}).Admitted {
					t.Fatalf("key %s still denied after reset of all keys", k)
				}
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(Epoch)
			tc.run(t, newStore(t, clk), clk)
		})
	}
}

func testDryRun(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	s := newStore(t, clk)
	spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 2}}, limiter.BreakerSpec{Enabled: true, Manual: true})
	c := limiter.BudgetCheck{Spec: spec, Key: "k"}
	for i := 0; i < 10; i++ {
		if res := Take(t, s, false, c).Results[0]; !res.Allowed {
			t.Fatalf("dry run %d denied on an empty budget: %+v", i, res)
		}
	}
	Take(t, s, true, c)
	Take(t, s, true, c)
	res := Take(t, s, false, c).Results[0]
	if res.Allowed || res.Reason != limiter.WindowExhausted {
		t.Fatalf("dry run on an exhausted budget: got %+v, want judged as denied", res)
	}
	// The dry run did not trip the breaker: after the window it admits again.
	clk.Step(time.Minute)
	if res := Take(t, s, true, c).Results[0]; !res.Allowed {
		t.Fatalf("a dry run tripped the breaker: %+v", res)
	}
}

func testShadow(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	s := newStore(t, clk)
	shadow := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1}}, limiter.BreakerSpec{Enabled: true, Manual: true})
	enforce := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 10}}, limiter.BreakerSpec{})
	for i := 0; i < 3; i++ {
		b := Take(t, s, true, limiter.BudgetCheck{Spec: shadow, Key: "k", Shadow: true}, limiter.BudgetCheck{Spec: enforce, Key: "k"})
		if !b.Admitted {
			t.Fatalf("request %d: a shadow check denied", i)
		}
		if want := i == 0; b.Results[0].Allowed != want {
			t.Fatalf("request %d: shadow allowed=%v, want %v", i, b.Results[0].Allowed, want)
		}
	}
	if got := Take(t, s, false, limiter.BudgetCheck{Spec: enforce, Key: "k"}).Results[0].Used[0]; got != 3 {
		t.Fatalf("enforced budget used %d, want 3", got)
	}
	if res := Take(t, s, false, limiter.BudgetCheck{Spec: shadow, Key: "k", Shadow: true}).Results[0]; res.State != limiter.Open {
		t.Fatalf("shadow breaker: got %v, want Open (tracked to report what would have happened)", res.State)
	}
}

func testRates(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	s := newStore(t, clk)
	n := specSeq.Add(1)
	spec := &limiter.RateSpec{Name: fmt.Sprintf("r%d", n), ID: fmt.Sprintf("r%d@test", n), QPS: 10, Burst: 5, Interval: 100 * time.Millisecond}
	rate := func(key string) limiter.RateResult {
		b := &limiter.RateBatch{Checks: []limiter.RateCheck{{Spec: spec, Key: key}}}
		if err := s.Rates(context.Background(), b); err != nil || len(b.Results) != 1 {
			t.Fatalf("Rates: %v (%d results)", err, len(b.Results))
		}
		return b.Results[0]
	}
	for i := 0; i < 5; i++ {
		if !rate("ua").Allowed {
			t.Fatalf("burst request %d denied", i)
		}
	}
	res := rate("ua")
	if res.Allowed || res.RetryAfter != 100*time.Millisecond {
		t.Fatalf("6th request: got %+v, want denied, retry in 100ms", res)
	}
	if !rate("other").Allowed {
		t.Fatal("another key shares the bucket")
	}
	clk.Step(100 * time.Millisecond)
	if !rate("ua").Allowed {
		t.Fatal("after one interval one token is back")
	}
	if rate("ua").Allowed {
		t.Fatal("only one token came back")
	}
	clk.Step(time.Second)
	admitted := 0
	for i := 0; i < 10; i++ {
		if rate("ua").Allowed {
			admitted++
		}
	}
	if admitted != 5 {
		t.Fatalf("after a full refill %d admitted at once, want the burst of 5", admitted)
	}
	// A denial stops the batch: later checks are not charged.
	spec2 := &limiter.RateSpec{Name: spec.Name + "x", ID: spec.ID + "x", QPS: 1, Burst: 1, Interval: time.Second}
	b := &limiter.RateBatch{Checks: []limiter.RateCheck{{Spec: spec, Key: "ua"}, {Spec: spec2, Key: "ua"}}}
	if err := s.Rates(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if b.Results[0].Allowed || !b.Results[1].Skipped {
		t.Fatalf("got %+v, want the first denied and the second skipped", b.Results)
	}
}

func testKeysIndependent(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	s := newStore(t, clk)
	spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1}}, limiter.BreakerSpec{Enabled: true, Manual: true})
	Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "namespace=a"})
	Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "namespace=a"})
	if !Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "namespace=b"}).Admitted {
		t.Fatal("exhausting namespace=a denied namespace=b")
	}
}
