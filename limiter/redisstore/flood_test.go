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

// TestRateKeysAreBoundedAndAFloodNeverStarvesExistingClients: storetest.Flood
// on Redis (package limiter runs it on the memory store).
func TestRateKeysAreBoundedAndAFloodNeverStarvesExistingClients(t *testing.T) {
	const maxKeys = 64
	srv := redistest.Start(t, redistest.Options{})
	clk := clocktesting.NewFakeClock(storetest.Epoch)
	rs := redisFactory(urlOpts(srv.URL()), func(c *RedisConfig) { c.MaxKeysPerRule = maxKeys })(t, clk).(*RedisStore)
	storetest.Flood(t, storetest.Flooded{Store: rs, Clock: clk, MaxKeys: maxKeys, Keys: func(t *testing.T) int {
		n := 0
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
	}})
}

// TestRateOverflowDecidesAlikeInBothStores: with rules so small that shards
// fill up, memory and Redis still give every rate check the same answer:
// the same keys own a bucket, the same ones share the overflow bucket (the
// overflow bucket is taken, or the answers would not match).
func TestRateOverflowDecidesAlikeInBothStores(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	newRedis := redisFactory(urlOpts(srv.URL()), func(c *RedisConfig) { c.MaxKeysPerRule = 64 })
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
		overflowed += rs.(*RedisStore).overflowed.Load()
	})
	if overflowed == 0 {
		t.Fatal("no check was judged on an overflow bucket: the property did not reach what it is about")
	}
}
