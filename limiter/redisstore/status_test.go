package redisstore

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/internal/limitertest"
	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
	"github.com/kubedefender/kubedefender/limiter/storetest"
	"github.com/kubedefender/kubedefender/policy"
)

// TestRedisClusterStatus reads status from a 3-master cluster. The Makefile's
// test target runs it with -race: each master is read on its own goroutine.
func TestRedisClusterStatus(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	opts := urlOpts(cl.URL())
	ctx := context.Background()
	t.Run("the hottest rate keys come from every master and none is lost", func(t *testing.T) {
		s := redisFactory(opts, nil)(t, clocktesting.NewFakeClock(storetest.Epoch)).(*RedisStore)
		spec := &limiter.RateSpec{Name: "status", ID: "status@test", QPS: 1, Burst: 5, Interval: time.Second}
		var want []string
		for i := 0; i < 90; i++ {
			key := fmt.Sprintf("user=u%02d", i)
			want = append(want, key)
			b := &limiter.RateBatch{Checks: []limiter.RateCheck{{Spec: spec, Key: key}}}
			if err := s.Rates(ctx, b); err != nil || !b.Results[0].Allowed {
				t.Fatalf("rate %s: %v %+v", key, err, b.Results)
			}
		}
		for round := 0; round < 5; round++ {
			hot, err := s.HottestRates(ctx, spec, 1000)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, k := range hot {
				got = append(got, k.Key)
			}
			sort.Strings(got)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("round %d: HottestRates returned %d keys, want all %d:\n%v", round, len(got), len(want), got)
			}
		}
	})
	t.Run("status and the store gauges read the cluster while decisions run", func(t *testing.T) {
		clk := clocktesting.NewFakeClock(storetest.Epoch)
		store := redisFactory(opts, nil)(t, clk)
		reg := prometheus.NewRegistry()
		e, err := limiter.NewEngine(limiter.EngineConfig{Policy: limitertest.Parse(t, limitertest.EnginePolicy), Store: store, Fallback: limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk}), Clock: clk, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 10; i++ {
					e.Decide(ctx, &limiter.Attributes{Attributes: policy.Attributes{Verb: "list", Resource: "pods", User: fmt.Sprintf("u%d-%d", w, i), UserAgent: "node-agent/1"}, Front: limiter.FrontProxy})
					e.Decide(ctx, storetest.PodDelete(fmt.Sprintf("w%d", w), "p"))
					e.RefreshMetrics(ctx)
					e.Status(ctx, 5)
				}
			}()
		}
		wg.Wait()
		e.RefreshMetrics(ctx)
		limitertest.CheckGauges(t, reg, "four namespaces past their budget", limitertest.EngineGauges{NodeOpen: 0, PodOpen: 4, Node1m: 1, Pod1h: 0, Pod1m: 0, Svc1m: 1}.Series())
		st := e.Status(ctx, 100)
		if len(st.Errors) != 0 || len(st.Budgets[0].Keys) != 4 || len(st.RateLimits[0].Hottest) != 40 {
			t.Fatalf("status: errors %v, %d pod-deletes keys (want 4), %d agent-lists keys (want 40)", st.Errors, len(st.Budgets[0].Keys), len(st.RateLimits[0].Hottest))
		}
	})
}
