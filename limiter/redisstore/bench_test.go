package redisstore

import (
	"context"
	"encoding/csv"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
)

// BenchmarkRedisStore measures budget and rate-limit decisions against a
// local redis-server at 1, 16 and 64 concurrent callers, and runs
// redis-benchmark with a one-INCR Lua script at the same concurrency on the
// same server right after (same machine load), then prints a table with the
// ratios. Each runs with a plain client (one connection per decision in
// flight) and with RedisConfig.AutoPipeline. Budget decisions are the
// heavy path: 4 windows (1m/5m/1h/24h), each admitted and charged, keys
// spread over 100k namespaces; rate decisions are one GCRA check.
//
//	go test -run '^$' -bench BenchmarkRedisStore -benchtime 2s ./limiter/
func BenchmarkRedisStore(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	budget := &limiter.BudgetSpec{Name: "bench", ID: "bench@b", Windows: []limiter.WindowSpec{
		{Length: time.Minute, Limit: 20}, {Length: 5 * time.Minute, Limit: 50}, {Length: time.Hour, Limit: 200}, {Length: 24 * time.Hour, Limit: 1000}}}
	rate := &limiter.RateSpec{Name: "bench", ID: "bench@r", QPS: 100, Burst: 200, Interval: 10 * time.Millisecond}
	type row struct{ ops, p99 float64 }
	results := map[string]row{}
	var mu sync.Mutex
	stores := map[string]*RedisStore{}
	for _, mode := range []string{"plain", "autopipeline"} {
		s, err := NewRedisStore(RedisConfig{URL: srv.URL(), KeyPrefix: "kdbench:", Timeout: time.Second, AutoPipeline: mode == "autopipeline"})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		stores[mode] = s
	}
	flush := srv.Client(b)
	keys := make([]string, 100000)
	for i := range keys {
		keys[i] = "namespace=ns" + strconv.Itoa(i)
	}
	ops := map[string]func(ctx context.Context, store *RedisStore, i int) error{
		"budget": func(ctx context.Context, store *RedisStore, i int) error {
			bb := limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: budget, Key: keys[i%len(keys)]}}, Commit: true}
			return store.Budgets(ctx, &bb)
		},
		"rate": func(ctx context.Context, store *RedisStore, i int) error {
			rb := limiter.RateBatch{Checks: []limiter.RateCheck{{Spec: rate, Key: keys[i%10000]}}}
			return store.Rates(ctx, &rb)
		},
	}
	concurrency := []int{1, 16, 64}
	ref := map[int]row{}
	for _, c := range concurrency {
		for _, kind := range []string{"budget", "rate"} {
			for _, mode := range []string{"plain", "autopipeline"} {
				name := fmt.Sprintf("%s/%s/callers=%d", kind, mode, c)
				store := stores[mode]
				b.Run(name, func(b *testing.B) {
					if err := flush.FlushAll(context.Background()).Err(); err != nil {
						b.Fatal(err)
					}
					op := ops[kind]
					lat := make([][]time.Duration, c)
					var wg sync.WaitGroup
					var failed sync.Once
					var opErr error
					b.ResetTimer()
					start := time.Now()
					for g := 0; g < c; g++ {
						n := b.N / c
						if g < b.N%c {
							n++
						}
						lat[g] = make([]time.Duration, 0, n)
						wg.Add(1)
						go func() {
							defer wg.Done()
							ctx := context.Background()
							for i := 0; i < n; i++ {
								t0 := time.Now()
								if err := op(ctx, store, g*1_000_003+i); err != nil {
									failed.Do(func() { opErr = err })
									return
								}
								lat[g] = append(lat[g], time.Since(t0))
							}
						}()
					}
					wg.Wait()
					elapsed := time.Since(start)
					b.StopTimer()
					if opErr != nil {
						b.Fatal(opErr)
					}
					all := slices.Concat(lat...)
					slices.Sort(all)
					r := row{ops: float64(b.N) / elapsed.Seconds(), p99: float64(all[len(all)*99/100].Microseconds())}
					b.ReportMetric(r.ops, "decisions/s")
					b.ReportMetric(r.p99, "p99-µs")
					mu.Lock()
					results[name] = r
					mu.Unlock()
				})
			}
		}
		// redis-benchmark right after, at the same concurrency: a one-INCR Lua
		// script, so both sides of a ratio see the same machine load.
		n := 20000
		if c > 1 {
			n = 60000
		}
		out, err := exec.Command("redis-benchmark", "-h", "127.0.0.1", "-p", strconv.Itoa(srv.Port), "-n", strconv.Itoa(n), "-c", strconv.Itoa(c),
			"--csv", "EVAL", "return redis.call('INCR', KEYS[1])", "1", "kdbench:incr").Output()
		if err != nil {
			b.Fatalf("redis-benchmark: %v", err)
		}
		recs, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
		if err != nil || len(recs) < 2 || len(recs[1]) < 7 {
			b.Fatalf("redis-benchmark output %q: %v", out, err)
		}
		rps, _ := strconv.ParseFloat(recs[1][1], 64)
		p99, _ := strconv.ParseFloat(recs[1][6], 64)
		ref[c] = row{ops: rps, p99: p99 * 1000}
	}
	var tb strings.Builder
	fmt.Fprintf(&tb, "\n%-7s %-13s %7s %12s %9s %20s %9s %12s\n", "kind", "client", "callers", "decisions/s", "p99", "redis-benchmark rps", "p99", "ratio (rps)")
	for _, kind := range []string{"budget", "rate"} {
		for _, mode := range []string{"plain", "autopipeline"} {
			for _, c := range concurrency {
				r, ok := results[fmt.Sprintf("%s/%s/callers=%d", kind, mode, c)]
				if !ok {
					continue
				}
				fmt.Fprintf(&tb, "%-7s %-13s %7d %12.0f %7.0fµs %20.0f %7.0fµs %12.2f\n", kind, mode, c, r.ops, r.p99, ref[c].ops, ref[c].p99, r.ops/ref[c].ops)
			}
		}
	}
	fmt.Print(tb.String()) // b.Log of a parent benchmark is not printed
}
