package redisstore

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
	"pgregory.net/rapid"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
	"github.com/kubedefender/kubedefender/limiter/storetest"
	"github.com/kubedefender/kubedefender/policy"
)

// TestRateKeysAreBoundedAndAFloodNeverStarvesExistingClients: rate limits
// keyed on userAgent (chosen by the client) keep at most MaxKeysPerRule keys
// per rule in Redis as in memory; new keys of a full rule share an overflow
// bucket, and a client that keeps asking keeps its own bucket through a flood
// of new user agents, sweeps included.
func TestRateKeysAreBoundedAndAFloodNeverStarvesExistingClients(t *testing.T) {
	const maxKeys = 64
	srv := redistest.Start(t, redistest.Options{})
	stores := []struct {
		name  string
		new   func(t *testing.T, clk *clocktesting.FakeClock) limiter.Store
		sweep func(s limiter.Store)
		keys  func(t *testing.T, s limiter.Store) int
	}{
		{
			name: "memory",
			new: func(t *testing.T, clk *clocktesting.FakeClock) limiter.Store {
				return limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk, MaxKeysPerRule: maxKeys})
			},
			sweep: func(s limiter.Store) { s.(*limiter.MemoryStore).Sweep() },
			keys:  func(t *testing.T, s limiter.Store) int { return s.(*limiter.MemoryStore).Stats().RateKeys },
		},
		{
			name: "redis",
			new:  redisFactory(singleOpts(srv), func(c *RedisConfig) { c.MaxKeysPerRule = maxKeys }),
			keys: func(t *testing.T, s limiter.Store) int {
				n := 0
				rs := s.(*RedisStore)
				err := scanEach(context.Background(), rs.client, globEscape(rs.prefix)+"*", time.Second, func(keys []string) error {
					for _, k := range keys {
						if strings.Contains(k, "}k:") {
							n++
						}
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				return n
			},
		},
	}
	for _, sc := range stores {
		t.Run(sc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(storetest.Epoch)
			s := sc.new(t, clk)
			spec := &limiter.RateSpec{Name: "agents", ID: "agents@flood", QPS: 1, Burst: 2, Interval: time.Second}
			ask := func(key string) bool {
				b := &limiter.RateBatch{Checks: []limiter.RateCheck{{Spec: spec, Key: key}}}
				if err := s.Rates(context.Background(), b); err != nil {
					t.Fatal(err)
				}
				return b.Results[0].Allowed
			}
			if !ask("userAgent=kubectl/v1.30") {
				t.Fatal("the real client's first request was denied")
			}
			for round := 0; round < 12; round++ {
				clk.Step(10 * time.Second)
				if sc.sweep != nil {
					sc.sweep(s)
				}
				flooded := 0
				for i := 0; i < 1000; i++ {
					if ask(fmt.Sprintf("userAgent=flood-%d-%d", round, i)) {
						flooded++
					}
				}
				if flooded > 2*maxKeys+64 {
					t.Fatalf("round %d: %d of 1000 new user agents were admitted, want them limited together (at most a fresh bucket per free slot plus the overflow buckets)", round, flooded)
				}
				if !ask("userAgent=kubectl/v1.30") {
					t.Fatalf("round %d: the real client, asking every 10s at 1 qps, was denied: the flood took its bucket", round)
				}
				if n := sc.keys(t, s); n > maxKeys {
					t.Fatalf("round %d: the rule holds %d keys, want at most %d", round, n, maxKeys)
				}
			}
		})
	}
}

// TestRateOverflowDecidesAlikeInBothStores: with rules so small that shards
// fill up, memory and Redis still give every rate check the same answer:
// the same keys own a bucket, the same ones share the overflow bucket.
func TestRateOverflowDecidesAlikeInBothStores(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	newRedis := redisFactory(singleOpts(srv), func(c *RedisConfig) { c.MaxKeysPerRule = 64 })
	var overflowed int64
	defer func() { t.Logf("%d checks were judged on an overflow bucket", overflowed) }()
	rapid.Check(t, func(rt *rapid.T) {
		clk := clocktesting.NewFakeClock(storetest.Epoch)
		ms := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk, MaxKeysPerRule: 64})
		rs := newRedis(t, clk)
		var specs []*limiter.RateSpec
		for i := rapid.IntRange(1, 2).Draw(rt, "rules"); i > 0; i-- {
			specs = append(specs, limiter.NewRateSpec(&policy.RateLimit{Name: fmt.Sprintf("r%d", i),
				QPS: rapid.SampledFrom([]float64{0.001, 0.5, 1, 20}).Draw(rt, "qps"), Burst: rapid.SampledFrom([]int64{1, 2, 5}).Draw(rt, "burst")}))
		}
		for op := rapid.IntRange(1, 300).Draw(rt, "ops"); op > 0; op-- {
			clk.Step(rapid.SampledFrom([]time.Duration{0, 0, time.Millisecond, 100 * time.Millisecond, time.Second, 30 * time.Second, 61 * time.Second}).Draw(rt, "step"))
			var checks []limiter.RateCheck
			for _, sp := range specs {
				if rapid.Bool().Draw(rt, "matches") {
					checks = append(checks, limiter.RateCheck{Spec: sp, Key: fmt.Sprintf("userAgent=u%d", rapid.IntRange(0, 300).Draw(rt, "key")), Shadow: rapid.IntRange(0, 3).Draw(rt, "shadow") == 0})
				}
			}
			if len(checks) == 0 {
				continue
			}
			mb, rb := &limiter.RateBatch{Checks: checks}, &limiter.RateBatch{Checks: checks}
			if err := ms.Rates(context.Background(), mb); err != nil {
				rt.Fatal(err)
			}
			if err := rs.Rates(context.Background(), rb); err != nil {
				rt.Fatal(err)
			}
			if !reflect.DeepEqual(mb.Results, rb.Results) {
				rt.Fatalf("at +%s, checks %+v:\nmemory %+v\nredis  %+v", clk.Now().Sub(storetest.Epoch), checks, mb.Results, rb.Results)
			}
		}
		mo, ro := ms.Stats().Overflowed, rs.(*RedisStore).Overflowed()
		if mo != ro {
			rt.Fatalf("overflowed: memory %d, redis %d", mo, ro)
		}
		overflowed += mo
	})
}
