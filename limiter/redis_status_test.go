package limiter

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
)

// TestRedisClusterStatus reads status from a 3-master cluster. The Makefile's
// test target runs it with -race: each master is read on its own goroutine.
func TestRedisClusterStatus(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	opts := func() *redis.UniversalOptions {
		o, err := ParseRedisURL(cl.URL())
		if err != nil {
			panic(err)
		}
		return o
	}
	ctx := context.Background()
	t.Run("the hottest rate keys come from every master and none is lost", func(t *testing.T) {
		s := redisFactory(opts, nil)(t, clocktesting.NewFakeClock(testEpoch)).(*RedisStore)
		spec := &RateSpec{Name: "status", ID: "status@test", QPS: 1, Burst: 5, Interval: time.Second}
		var want []string
		for i := 0; i < 90; i++ {
			key := fmt.Sprintf("user=u%02d", i)
			want = append(want, key)
			b := &RateBatch{Checks: []RateCheck{{Spec: spec, Key: key}}}
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
}
