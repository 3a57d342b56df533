package limiter

import (
	"context"
	"math"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
	"github.com/kubedefender/kubedefender/policy"
)

// TestStoresAgreeAtTheBoundsOfValidation: at the extremes validation allows
// (qps 0.001 and 1e6, burst 1 and 1e6, a limit of 2^63-1, windows of 50d),
// the memory store and Redis give the same answer to the nanosecond (Redis
// keeps burst×interval, up to 1e18 ns, as a (s, ns) pair; the property test
// draws these values too, this pins them).
func TestStoresAgreeAtTheBoundsOfValidation(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	newRedis := redisFactory(singleOpts(srv), nil)
	steps := []time.Duration{0, 0, time.Nanosecond, time.Microsecond, 999 * time.Microsecond, time.Second, 999 * time.Second, time.Hour, 11 * 24 * time.Hour}
	for _, qps := range []float64{policy.MinQPS, 0.3, policy.MaxQPS} {
		for _, burst := range []int64{1, 7, policy.MaxBurst} {
			clk := clocktesting.NewFakeClock(testEpoch)
			ms, rs := NewMemoryStore(MemoryConfig{Clock: clk}), newRedis(t, clk)
			spec := NewRateSpec(&policy.RateLimit{Name: "edge", QPS: qps, Burst: burst})
			for i := 0; i < 3*len(steps); i++ {
				clk.Step(steps[i%len(steps)])
				for n := 0; n < 3; n++ {
					mb, rb := &RateBatch{Checks: []RateCheck{{Spec: spec, Key: "k"}}}, &RateBatch{Checks: []RateCheck{{Spec: spec, Key: "k"}}}
					if err := ms.Rates(context.Background(), mb); err != nil {
						t.Fatal(err)
					}
					if err := rs.Rates(context.Background(), rb); err != nil {
						t.Fatal(err)
					}
					if mb.Results[0] != rb.Results[0] {
						t.Fatalf("qps %v burst %d, request %d at +%s: memory %+v, redis %+v", qps, burst, i, clk.Now().Sub(testEpoch), mb.Results[0], rb.Results[0])
					}
				}
			}
		}
	}
	clk := clocktesting.NewFakeClock(testEpoch)
	ms, rs := NewMemoryStore(MemoryConfig{Clock: clk}), newRedis(t, clk)
	spec := testSpec([]WindowSpec{{time.Nanosecond, 1}, {time.Second, 3}, {policy.MaxWindow, math.MaxInt64}}, BreakerSpec{Enabled: true, Cooldown: policy.MaxCooldown, HalfOpenLimit: math.MaxInt64})
	for i := 0; i < 4*len(steps); i++ {
		clk.Step(steps[i%len(steps)] + 49*24*time.Hour*time.Duration(i%2))
		mb, rb := take(t, ms, true, BudgetCheck{Spec: spec, Key: "k"}), take(t, rs, true, BudgetCheck{Spec: spec, Key: "k"})
		m, r := mb.Results[0], rb.Results[0]
		if m.Allowed != r.Allowed || m.Used != r.Used || m.RetryAfter != r.RetryAfter || m.State != r.State || m.Window != r.Window {
			t.Fatalf("budget request %d at +%s: memory %+v, redis %+v", i, clk.Now().Sub(testEpoch), m, r)
		}
	}
}
