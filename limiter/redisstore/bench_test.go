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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/kubedefender/kubedefender/internal/benchstat"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
)

// BenchmarkRedisStore measures budget and rate-limit decisions against a
// local redis-server at 1, 16 and 64 concurrent callers, in five rounds that
// alternate with redis-benchmark running a one-INCR Lua script at the same
// concurrency on the same server, so both sides of each ratio see the same
// machine load; it prints the medians and the median ratio. Each runs with a
// plain client (one connection per decision in flight) and with
// RedisConfig.AutoPipeline. Beside the throughput it prints the redis-server
// CPU time per operation (INFO cpu), which a busy machine disturbs less. A
// budget decision is one check of 4 windows (1m/5m/1h/24h: 20/50/200/1000);
// the callers walk overlapping runs of keys over 100k namespaces, so a key
// takes 20 admissions (charged) and then denials. A rate decision is one
// GCRA check.
//
//	go test -run '^$' -bench BenchmarkRedisStore -benchtime 2s ./limiter/redisstore/
func BenchmarkRedisStore(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	budget := &limiter.BudgetSpec{Name: "bench", ID: "bench@b", Windows: []limiter.WindowSpec{
		{Length: time.Minute, Limit: 20}, {Length: 5 * time.Minute, Limit: 50}, {Length: time.Hour, Limit: 200}, {Length: 24 * time.Hour, Limit: 1000}}}
	rate := &limiter.RateSpec{Name: "bench", ID: "bench@r", QPS: 100, Burst: 200, Interval: 10 * time.Millisecond}
	results := map[string]benchRow{}
	var mu sync.Mutex
	stores := map[string]*RedisStore{}
	regs := map[string]*prometheus.Registry{}
	for _, mode := range []string{"plain", "autopipeline"} {
		regs[mode] = prometheus.NewRegistry()
		s, err := NewRedisStore(RedisConfig{URL: srv.URL(), KeyPrefix: "kdbench:", Timeout: time.Second, AutoPipeline: mode == "autopipeline", Registerer: regs[mode]})
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
	ref := map[string]benchRow{}
	ratio := map[string]float64{}
	for _, c := range concurrency {
		for _, kind := range []string{"budget", "rate"} {
			for _, mode := range []string{"plain", "autopipeline"} {
				name := fmt.Sprintf("%s/%s/callers=%d", kind, mode, c)
				store := stores[mode]
				op := ops[kind]
				b.Run(name, func(b *testing.B) {
					if err := flush.FlushAll(context.Background()).Err(); err != nil {
						b.Fatal(err)
					}
					// Rounds alternate with redis-benchmark (the probing runs
					// of a small b.N take one round), so both sides of each
					// ratio see the same machine load; the medians are reported.
					rounds := 1
					if b.N >= 5000 {
						rounds = 5
					}
					next := make([]int, c) // each caller's next operation, across rounds
					for g := range next {
						next[g] = g * 1_000_003
					}
					var mine, theirs []benchRow
					var ratios []float64
					done := 0
					calls0, decisions0 := budgetCalls(b, regs[mode])
					b.ResetTimer()
					for r := 0; r < rounds; r++ {
						n := (b.N - done) / (rounds - r)
						done += n
						b.StopTimer()
						them := redisBenchmark(b, srv.Port, c, flush)
						b.StartTimer()
						me := runCallers(b, c, n, next, func(ctx context.Context, i int) error { return op(ctx, store, i) }, flush)
						mine, theirs = append(mine, me), append(theirs, them)
						ratios = append(ratios, me.ops/them.ops)
					}
					b.StopTimer()
					r := median(mine)
					if calls, decisions := budgetCalls(b, regs[mode]); calls > calls0 {
						r.perCall = (decisions - decisions0) / (calls - calls0)
					}
					b.ReportMetric(r.ops, "decisions/s")
					b.ReportMetric(r.p99, "p99-µs")
					b.ReportMetric(r.cpu, "redis-cpu-µs/op")
					mu.Lock()
					results[name], ref[name] = r, median(theirs)
					slices.Sort(ratios)
					ratio[name] = ratios[len(ratios)/2]
					mu.Unlock()
				})
			}
		}
	}
	var tb strings.Builder
	fmt.Fprintf(&tb, "\n%-7s %-13s %7s %12s %9s %9s %9s %20s %9s %9s %12s %12s\n", "kind", "client", "callers", "decisions/s", "p99", "cpu/op", "per call", "redis-benchmark rps", "p99", "cpu/op", "ratio (rps)", "ratio (cpu)")
	for _, kind := range []string{"budget", "rate"} {
		for _, mode := range []string{"plain", "autopipeline"} {
			for _, c := range concurrency {
				name := fmt.Sprintf("%s/%s/callers=%d", kind, mode, c)
				r, ok := results[name]
				if !ok {
					continue
				}
				perCall := "-"
				if kind == "budget" {
					perCall = fmt.Sprintf("%.1f", r.perCall)
				}
				fmt.Fprintf(&tb, "%-7s %-13s %7d %12.0f %7.0fµs %7.1fµs %9s %20.0f %7.0fµs %7.1fµs %12.2f %12.2f\n",
					kind, mode, c, r.ops, r.p99, r.cpu, perCall, ref[name].ops, ref[name].p99, ref[name].cpu, ratio[name], ref[name].cpu/r.cpu)
			}
		}
	}
	fmt.Print(tb.String()) // b.Log of a parent benchmark is not printed
}

// benchRow is one measurement: operations per second, p99 (µs),
// redis-server CPU per operation (µs) and, for budgets, decisions per script
// call.
type benchRow struct{ ops, p99, cpu, perCall float64 }

// budgetCalls reads the budget script calls and the decisions they judged
// from the store's kubedefender_store_budget_decisions_per_call.
func budgetCalls(b *testing.B, reg *prometheus.Registry) (calls, decisions float64) {
	b.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "kubedefender_store_budget_decisions_per_call" {
			h := mf.GetMetric()[0].GetHistogram()
			return float64(h.GetSampleCount()), h.GetSampleSum()
		}
	}
	b.Fatal("no kubedefender_store_budget_decisions_per_call")
	return 0, 0
}

// median takes each field's median over rows.
func median(rows []benchRow) benchRow {
	field := func(f func(benchRow) float64) float64 {
		v := make([]float64, len(rows))
		for i, r := range rows {
			v[i] = f(r)
		}
		return benchstat.Median(v)
	}
	return benchRow{
		ops: field(func(r benchRow) float64 { return r.ops }),
		p99: field(func(r benchRow) float64 { return r.p99 }),
		cpu: field(func(r benchRow) float64 { return r.cpu }),
	}
}

// runCallers runs n operations on c concurrent callers (caller g runs
// operations next[g], next[g]+1, …, and next is moved past them) and
// measures them.
func runCallers(b *testing.B, c, n int, next []int, op func(ctx context.Context, i int) error, rc *redis.Client) benchRow {
	b.Helper()
	cpu0 := serverCPU(b, rc)
	lat := make([][]time.Duration, c)
	var wg sync.WaitGroup
	var failed sync.Once
	var opErr error
	start := time.Now()
	for g := 0; g < c; g++ {
		k := n / c
		if g < n%c {
			k++
		}
		lat[g] = make([]time.Duration, 0, k)
		first := next[g]
		next[g] += k
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := first; i < first+k; i++ {
				t0 := time.Now()
				if err := op(ctx, i); err != nil {
					failed.Do(func() { opErr = err })
					return
				}
				lat[g] = append(lat[g], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if opErr != nil {
		b.Fatal(opErr)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	r := benchRow{ops: float64(n) / elapsed.Seconds(), cpu: (serverCPU(b, rc) - cpu0) / float64(n)}
	if len(all) > 0 {
		r.p99 = float64(all[len(all)*99/100].Microseconds())
	}
	return r
}

// redisBenchmark runs redis-benchmark with a one-INCR Lua script at c
// concurrent clients on the server at port, and returns its requests per
// second, p99 (µs) and redis-server CPU per request (µs).
func redisBenchmark(b *testing.B, port, c int, rc *redis.Client) (r benchRow) {
	b.Helper()
	n := 10000
	if c > 1 {
		n = 30000
	}
	cpu0 := serverCPU(b, rc)
	out, err := exec.Command("redis-benchmark", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-n", strconv.Itoa(n), "-c", strconv.Itoa(c),
		"--csv", "EVAL", "return redis.call('INCR', KEYS[1])", "1", "kdbench:incr").Output()
	if err != nil {
		b.Fatalf("redis-benchmark: %v", err)
	}
	r.cpu = (serverCPU(b, rc) - cpu0) / float64(n)
	recs, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil || len(recs) < 2 || len(recs[1]) < 7 {
		b.Fatalf("redis-benchmark output %q: %v", out, err)
	}
	r.ops, _ = strconv.ParseFloat(recs[1][1], 64)
	r.p99, _ = strconv.ParseFloat(recs[1][6], 64)
	r.p99 *= 1000
	return r
}

// serverCPU is the CPU time redis-server has used (user + system), in µs.
func serverCPU(b *testing.B, rc *redis.Client) float64 {
	b.Helper()
	info, err := rc.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("INFO cpu %s: %q", k, v)
			}
			total += f
		}
	}
	return total * 1e6
}
