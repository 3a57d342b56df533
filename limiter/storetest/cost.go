package storetest

import (
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
	"pgregory.net/rapid"

	"github.com/kubedefender/kubedefender/limiter"
)

// testCosts is the store contract for checks that take more than one token
// (cascades: AtRoot): every store runs it from testStoreSemantics.
func testCosts(t *testing.T, newStore NewStore) {
	t.Run("a cost-5 charge leaves limit-5 and frees at t0+window", func(t *testing.T) {
		clk := clocktesting.NewFakeClock(Epoch)
		s := newStore(t, clk)
		spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 20}, {Length: time.Hour, Limit: 30}}, limiter.BreakerSpec{})
		b := Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k", Cost: 5})
		if !b.Admitted || b.Results[0].Used[0] != 5 || b.Results[0].Used[1] != 5 {
			t.Fatalf("cost 5 on an empty key: %+v, want admitted with 5/20 and 5/30 used", b.Results[0])
		}
		clk.SetTime(Epoch.Add(10 * time.Second))
		res := Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k", Cost: 16}).Results[0]
		if res.Allowed || res.Window != 0 || res.Used[0] != 5 || res.RetryAfter != 50*time.Second {
			t.Fatalf("cost 16 with 15 left: %+v, want the 1m window denying, free when the t0 charge leaves (50s)", res)
		}
		if b := Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k", Cost: 15}); !b.Admitted || b.Results[0].Used[0] != 20 {
			t.Fatalf("cost 15 with 15 left: %+v, want admitted with 20/20 used", b.Results[0])
		}
		clk.SetTime(Epoch.Add(time.Minute - time.Nanosecond))
		if b := Take(t, s, false, limiter.BudgetCheck{Spec: spec, Key: "k"}); b.Admitted {
			t.Fatal("1ns before t0+1m the t0 charge still fills the window; want denied")
		}
		clk.SetTime(Epoch.Add(time.Minute))
		b = Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k", Cost: 5})
		if !b.Admitted || b.Results[0].Used[0] != 20 || b.Results[0].Used[1] != 25 {
			t.Fatalf("at t0+1m the 5 tokens of t0 are free: %+v, want 20/20 and 25/30", b.Results[0])
		}
		res = Take(t, s, false, limiter.BudgetCheck{Spec: spec, Key: "k", Cost: 6}).Results[0]
		if res.Allowed || res.Window != 1 || res.RetryAfter != time.Hour-time.Minute {
			t.Fatalf("cost 6 with 5 left in 1h: %+v, want window 1h denying, free in 59m", res)
		}
	})
	t.Run("costs are all or nothing across keys and budgets", func(t *testing.T) {
		clk := clocktesting.NewFakeClock(Epoch)
		s := newStore(t, clk)
		pods := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 20}}, limiter.BreakerSpec{})
		svcs := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 10}}, limiter.BreakerSpec{})
		b := Take(t, s, true,
			limiter.BudgetCheck{Spec: pods, Key: "namespace=a", Cost: 12},
			limiter.BudgetCheck{Spec: pods, Key: "namespace=b", Cost: 20},
			limiter.BudgetCheck{Spec: svcs, Key: "namespace=a", Cost: 11})
		if b.Admitted || !b.Results[0].Allowed || !b.Results[1].Allowed || b.Results[2].Allowed {
			t.Fatalf("one check over its limit: admitted=%v %+v, want only the services check denied", b.Admitted, b.Results)
		}
		for _, k := range []string{"namespace=a", "namespace=b"} {
			if used := Take(t, s, false, limiter.BudgetCheck{Spec: pods, Key: k}).Results[0].Used[0]; used != 0 {
				t.Fatalf("a denied batch charged %s: %d used", k, used)
			}
		}
		b = Take(t, s, true,
			limiter.BudgetCheck{Spec: pods, Key: "namespace=a", Cost: 12},
			limiter.BudgetCheck{Spec: pods, Key: "namespace=b", Cost: 20},
			limiter.BudgetCheck{Spec: svcs, Key: "namespace=a", Cost: 10})
		if !b.Admitted || b.Results[0].Used[0] != 12 || b.Results[1].Used[0] != 20 || b.Results[2].Used[0] != 10 {
			t.Fatalf("every check fits: admitted=%v %+v", b.Admitted, b.Results)
		}
	})
	t.Run("a cost above the limit is denied and trips the breaker", func(t *testing.T) {
		clk := clocktesting.NewFakeClock(Epoch)
		s := newStore(t, clk)
		spec := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 20}}, limiter.BreakerSpec{Enabled: true, Cooldown: 5 * time.Minute, HalfOpenLimit: 1})
		res := Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k", Cost: 312}).Results[0]
		if res.Allowed || res.Reason != limiter.WindowExhausted || res.State != limiter.Open || res.Used[0] != 0 || res.RetryAfter != 5*time.Minute {
			t.Fatalf("cost 312 > limit 20: %+v, want denied, nothing used, breaker Open for its 5m cooldown", res)
		}
		if res := Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k"}).Results[0]; res.Allowed || res.Reason != limiter.BreakerIsOpen {
			t.Fatalf("after the trip a cost-1 request: %+v, want denied by the open breaker", res)
		}
		huge := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1 << 40}}, limiter.BreakerSpec{})
		if b := Take(t, s, true, limiter.BudgetCheck{Spec: huge, Key: "k", Cost: limiter.MaxCost + 1}); b.Admitted || b.Results[0].Used[0] != 0 {
			t.Fatalf("a cost above MaxCost under a huge limit: %+v, want denied", b.Results[0])
		}
		if b := Take(t, s, true, limiter.BudgetCheck{Spec: huge, Key: "k", Cost: 5000}); !b.Admitted || b.Results[0].Used[0] != 5000 {
			t.Fatalf("cost 5000 under a huge limit: %+v, want admitted", b.Results[0])
		}
		noBreaker := Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 20}}, limiter.BreakerSpec{})
		res = Take(t, s, true, limiter.BudgetCheck{Spec: noBreaker, Key: "k", Cost: 1 << 62}).Results[0]
		if res.Allowed || res.Window != 0 || res.RetryAfter != time.Minute {
			t.Fatalf("a huge cost without a breaker: %+v, want denied, told to wait a whole window", res)
		}
	})
	t.Run("a cost above the limit waits exactly one window, however old the key", func(t *testing.T) {
		// The Redis log counts nanoseconds from a base second that only a
		// commit moves: 55 days on, now plus a 50-day window passes 2^53 ns,
		// which a Lua number no longer holds exactly.
		clk := clocktesting.NewFakeClock(Epoch)
		s := newStore(t, clk)
		spec := Spec([]limiter.WindowSpec{{Length: 50 * 24 * time.Hour, Limit: 2}}, limiter.BreakerSpec{})
		Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k"})
		clk.SetTime(Epoch.Add(10 * 24 * time.Hour))
		Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k"})
		clk.SetTime(Epoch.Add(55*24*time.Hour + time.Nanosecond))
		res := Take(t, s, false, limiter.BudgetCheck{Spec: spec, Key: "k", Cost: 3}).Results[0]
		if res.Allowed || res.Used[0] != 1 || res.RetryAfter != 50*24*time.Hour {
			t.Fatalf("cost 3 > limit 2 on a 55-day-old key: %+v, want denied, retry in exactly 50d", res)
		}
	})
	t.Run("a charge on a key whose base is over 104 days old is logged at now exactly", func(t *testing.T) {
		// A Manual breaker that is Open keeps its key, log and base second
		// for good; a reload that removes the breaker (same windows, same
		// ID) lets a charge through 105 days on. The Redis script packs the
		// log again at base now: the entry must be now to the nanosecond,
		// though now from the old base is past 2^53 ns, where a Lua number
		// holds only even nanoseconds (found by the random valid policies
		// property as a 1 ns difference). An odd nanosecond rounds down (5)
		// or up (7): a retry 1 ns short, or a clock 1 ns ahead.
		for _, odd := range []time.Duration{5, 7} {
			clk := clocktesting.NewFakeClock(Epoch)
			s := newStore(t, clk)
			window := 50 * 24 * time.Hour
			manual := Spec([]limiter.WindowSpec{{Length: window, Limit: 1}}, limiter.BreakerSpec{Enabled: true, Manual: true})
			Take(t, s, true, limiter.BudgetCheck{Spec: manual, Key: "k"})
			if res := Take(t, s, true, limiter.BudgetCheck{Spec: manual, Key: "k"}).Results[0]; res.State != limiter.Open {
				t.Fatalf("the second charge of a budget of 1: %+v, want its breaker Open", res)
			}
			removed := *manual
			removed.Breaker = limiter.BreakerSpec{}
			clk.SetTime(Epoch.Add(105*24*time.Hour + odd))
			if res := Take(t, s, true, limiter.BudgetCheck{Spec: &removed, Key: "k"}).Results[0]; !res.Allowed {
				t.Fatalf("+%dns: a charge 105 days on, the breaker removed: %+v, want admitted", odd, res)
			}
			b := Take(t, s, false, limiter.BudgetCheck{Spec: &removed, Key: "k"})
			if res := b.Results[0]; res.Allowed || res.Used[0] != 1 || res.RetryAfter != window || !b.Now.Equal(clk.Now()) {
				t.Fatalf("+%dns: the next check at %v: %+v at %v, want denied, 1 used, retry in exactly %s", odd, clk.Now(), res, b.Now, window)
			}
		}
	})
	t.Run("no window ever holds more than its limit with random costs", func(t *testing.T) {
		testCostSlidingWindow(t, newStore)
	})
}

func testCostSlidingWindow(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	s := newStore(t, clk)
	rapid.Check(t, func(rt *rapid.T) {
		ws := drawWindowSpecs(rt, 3, 1, 20)
		length, limit := ws[len(ws)-1].Length, ws[len(ws)-1].Limit
		spec := Spec(ws, limiter.BreakerSpec{})
		now := Epoch.Add(time.Duration(specSeq.Load()) * 24 * time.Hour)
		type charge struct {
			at   time.Time
			cost int64
		}
		var admitted []charge
		for i, n := 0, rapid.IntRange(1, 40).Draw(rt, "requests"); i < n; i++ {
			if rapid.Bool().Draw(rt, "advance") {
				now = now.Add(time.Duration(rapid.Int64Range(1, int64(length/time.Millisecond)).Draw(rt, "gapMs")) * time.Millisecond)
			}
			clk.SetTime(now)
			cost := rapid.Int64Range(1, limit+2).Draw(rt, "cost")
			want := true
			for _, w := range ws {
				used := int64(0)
				for _, a := range admitted {
					if a.at.After(now.Add(-w.Length)) {
						used += a.cost
					}
				}
				if used+cost > w.Limit {
					want = false
				}
			}
			b := Take(rt, s, true, limiter.BudgetCheck{Spec: spec, Key: "k", Cost: cost})
			if b.Results[0].Allowed != want {
				rt.Fatalf("request %d (cost %d) at +%s: allowed=%v, the exact log says %v", i, cost, now.Sub(Epoch), b.Results[0].Allowed, want)
			}
			if b.Admitted {
				admitted = append(admitted, charge{now, cost})
			}
		}
	})
}
