package storetest

import (
	"context"
	"math"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// agreeAtTheBoundsOfValidation: at the extremes validation allows
// (qps 0.001 and 1e6, burst 1 and 1e6, a limit of 2^63-1, windows of 50d),
// the memory store and Redis give the same answer to the nanosecond (Redis
// keeps burst×interval, up to 1e18 ns, as a (s, ns) pair; the property test
// draws these values too, this pins them).
func agreeAtTheBoundsOfValidation(t *testing.T, newStore NewStore) {
	steps := []time.Duration{0, 0, time.Nanosecond, time.Microsecond, 999 * time.Microsecond, time.Second, 999 * time.Second, time.Hour, 11 * 24 * time.Hour}
	for _, qps := range []float64{policy.MinQPS, 0.3, policy.MaxQPS} {
		for _, burst := range []int64{1, 7, policy.MaxBurst} {
			clk := clocktesting.NewFakeClock(Epoch)
			ms, other := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk}), newStore(t, clk)
			spec := limiter.NewRateSpec(&policy.RateLimit{Name: "edge", QPS: qps, Burst: burst})
			for i := 0; i < 3*len(steps); i++ {
				clk.Step(steps[i%len(steps)])
				for n := 0; n < 3; n++ {
					mb, rb := &limiter.RateBatch{Checks: []limiter.RateCheck{{Spec: spec, Key: "k"}}}, &limiter.RateBatch{Checks: []limiter.RateCheck{{Spec: spec, Key: "k"}}}
					if err := ms.Rates(context.Background(), mb); err != nil {
						t.Fatal(err)
					}
					if err := other.Rates(context.Background(), rb); err != nil {
						t.Fatal(err)
					}
					if mb.Results[0] != rb.Results[0] {
						t.Fatalf("qps %v burst %d, request %d at +%s: memory %+v, store %+v", qps, burst, i, clk.Now().Sub(Epoch), mb.Results[0], rb.Results[0])
					}
				}
			}
		}
	}
	clk := clocktesting.NewFakeClock(Epoch)
	ms, other := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk}), newStore(t, clk)
	spec := Spec([]limiter.WindowSpec{{Length: time.Nanosecond, Limit: 1}, {Length: time.Second, Limit: 3}, {Length: policy.MaxWindow, Limit: math.MaxInt64}}, limiter.BreakerSpec{Enabled: true, Cooldown: policy.MaxCooldown, HalfOpenLimit: math.MaxInt64})
	for i := 0; i < 4*len(steps); i++ {
		clk.Step(steps[i%len(steps)] + 49*24*time.Hour*time.Duration(i%2))
		mb, rb := Take(t, ms, true, limiter.BudgetCheck{Spec: spec, Key: "k"}), Take(t, other, true, limiter.BudgetCheck{Spec: spec, Key: "k"})
		m, r := mb.Results[0], rb.Results[0]
		if m.Allowed != r.Allowed || m.Used != r.Used || m.RetryAfter != r.RetryAfter || m.State != r.State || m.Window != r.Window {
			t.Fatalf("budget request %d at +%s: memory %+v, store %+v", i, clk.Now().Sub(Epoch), m, r)
		}
	}
}
