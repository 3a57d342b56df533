package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"pgregory.net/rapid"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/internal/limitertest"
	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
	"github.com/kubedefender/kubedefender/policy"
)

// redisEnginePolicy has one budget per onStoreFailure action, each on its
// own resource, and a rate limit.
const redisEnginePolicy = `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: 20}, {window: 1h, limit: 50}]
    breaker: {recovery: Auto, cooldown: 10m, halfOpenLimit: 2}
    onStoreFailure: Local
  - name: node-deletes
    match: {verbs: [delete], resources: [nodes]}
    windows: [{window: 1m, limit: 5}]
    breaker: {recovery: Manual}
    onStoreFailure: Deny
  - name: svc-deletes
    match: {verbs: [delete], resources: [services]}
    per: [namespace]
    windows: [{window: 1m, limit: 1000}]
    onStoreFailure: Allow
  rateLimits:
  - name: lists
    match: {verbs: [list], resources: ["*"]}
    per: [user]
    qps: 5
    burst: 10
    onStoreFailure: Local
`

func deleteOf(resource, ns, name string) *limiter.Attributes {
	return &limiter.Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: resource, Namespace: ns, Name: name, User: "alice"}, Checks: limiter.CheckBudgets}
}

// newRedisEngine builds an engine on a real-time RedisStore (Redis TIME).
func newRedisEngine(t *testing.T, url, prefix string, cfg func(*RedisConfig)) (*limiter.Engine, *RedisStore) {
	t.Helper()
	rc := RedisConfig{URL: url, KeyPrefix: prefix, Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	if cfg != nil {
		cfg(&rc)
	}
	s := openStore(t, rc)
	e, err := limiter.NewEngine(limiter.EngineConfig{Policy: limitertest.Parse(t, redisEnginePolicy), Store: s, Replicas: s.Replicas})
	if err != nil {
		t.Fatal(err)
	}
	return e, s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// decideConcurrently has workers goroutines decide each request of theirs,
// req(worker, i), worker g on engines[g%len(engines)], and counts the
// admitted and the fallen-back decisions.
func decideConcurrently(engines []*limiter.Engine, workers, each int, req func(g, i int) *limiter.Attributes) (admitted, fallback int64) {
	var nAdmitted, nFallback atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < workers; g++ {
		e := engines[g%len(engines)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				d := e.Decide(context.Background(), req(g, i))
				if d.Allowed {
					nAdmitted.Add(1)
				}
				if d.Fallback {
					nFallback.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return nAdmitted.Load(), nFallback.Load()
}

func TestTwoEnginesOnOneRedisNeverAdmitMoreThanTheLimit(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := "kdtest:two:"
	// A loaded CI machine must not turn a slow answer into a fallback here.
	slow := func(c *RedisConfig) { c.Timeout = 2 * time.Second }
	e1, _ := newRedisEngine(t, srv.URL(), prefix, slow)
	e2, _ := newRedisEngine(t, srv.URL(), prefix, slow)
	for round := 0; round < 3; round++ {
		ns := fmt.Sprintf("ns%d", round)
		got, fallback := decideConcurrently([]*limiter.Engine{e1, e2}, 16, 10, func(g, i int) *limiter.Attributes {
			return deleteOf("pods", ns, fmt.Sprintf("p%d-%d", g, i))
		})
		if fallback != 0 {
			t.Fatalf("round %d: %d decisions fell back", round, fallback)
		}
		if got != 20 {
			t.Fatalf("round %d: two engines admitted %d of 160 concurrent deletes in one minute, want exactly the limit 20", round, got)
		}
		// The breaker tripped in Redis: the other engine sees it Open at once.
		for _, e := range []*limiter.Engine{e1, e2} {
			if d := e.Decide(context.Background(), deleteOf("pods", ns, "late")); d.Allowed || d.State != limiter.Open {
				t.Fatalf("round %d: after exhaustion an engine answered %+v, want the shared breaker Open", round, d)
			}
		}
	}
	// A reset through one engine reaches the other.
	if err := e1.ResetBreakers(context.Background(), &limiter.Override{Name: "o", Budgets: []string{"pod-deletes"}, Namespaces: []string{"ns0"}, ResetBreaker: true}); err != nil {
		t.Fatal(err)
	}
	if d := e2.Decide(context.Background(), deleteOf("pods", "ns0", "after-reset")); !d.Allowed {
		t.Fatalf("after a reset through the other engine: %+v", d)
	}
}

// Property: whatever the limits and the concurrency, two engines on one
// Redis admit exactly min(limit, requests) within a window, together.
func TestTwoEnginesOnOneRedisPropertyUnderConcurrency(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	cfg := RedisConfig{URL: srv.URL(), KeyPrefix: "kdtest:prop:", Timeout: 2 * time.Second}
	s1, s2 := openStore(t, cfg), openStore(t, cfg)
	iter := 0
	rapid.Check(t, func(rt *rapid.T) {
		iter++
		limit := rapid.IntRange(1, 30).Draw(rt, "limit")
		hourly := limit + rapid.IntRange(0, 10).Draw(rt, "hourlyExtra")
		workers := rapid.IntRange(2, 12).Draw(rt, "workers")
		each := rapid.IntRange(1, 8).Draw(rt, "requestsPerWorker")
		pol := limitertest.Parse(t, fmt.Sprintf(`
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: prop}
spec:
  budgets:
  - name: deletes
    match: {verbs: [delete], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: %d}, {window: 1h, limit: %d}]
`, limit, hourly))
		var engines [2]*limiter.Engine
		for i, s := range []*RedisStore{s1, s2} {
			e, err := limiter.NewEngine(limiter.EngineConfig{Policy: pol, Store: s})
			if err != nil {
				rt.Fatal(err)
			}
			engines[i] = e
		}
		ns := fmt.Sprintf("prop%d", iter)
		admitted, fallback := decideConcurrently(engines[:], workers, each, func(int, int) *limiter.Attributes { return deleteOf("pods", ns, "p") })
		if fallback != 0 {
			rt.Fatalf("%d decisions fell back", fallback)
		}
		if want := int64(min(limit, workers*each)); admitted != want {
			rt.Fatalf("two engines admitted %d of %d concurrent deletes with limit %d, want %d", admitted, workers*each, limit, want)
		}
	})
}

func TestRedisStoreKeysExpireAndAManualOpenBreakerPersists(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	e, _ := newRedisEngine(t, srv.URL(), "kdtest:ttl:", nil)
	ctx := context.Background()
	for i := 0; i < 6; i++ {
		e.Decide(ctx, deleteOf("nodes", "", fmt.Sprintf("n%d", i))) // 5 admitted, the 6th trips the Manual breaker
	}
	e.Decide(ctx, deleteOf("pods", "a", "p"))
	rc := srv.Client(t)
	keys, err := rc.Keys(ctx, "kdtest:ttl:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	for _, k := range keys {
		ttl, err := rc.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		manualHash := strings.HasSuffix(k, budgetSuffix) && strings.Contains(k, "node-deletes")
		switch {
		case manualHash && ttl != -1:
			t.Errorf("%s: TTL %s, want none while the Manual breaker is Open", k, ttl)
		case !manualHash && (ttl <= 0 || ttl > time.Hour+2*time.Second):
			t.Errorf("%s: TTL %s, want at most the longest window (1h) + 1s", k, ttl)
		}
		t.Logf("%s TTL %s", k, ttl)
	}
	if len(keys) != 2 {
		t.Fatalf("keys %v, want one string for each of two budget keys", keys)
	}
}

// faultLoad runs Decide in a loop on several goroutines and records how
// long every call took and how it was decided.
type faultLoad struct {
	mu    sync.Mutex
	durs  []time.Duration
	max   time.Duration
	stop  chan struct{}
	wg    sync.WaitGroup
	calls atomic.Int64
}

func startLoad(e *limiter.Engine, workers int) *faultLoad {
	l := &faultLoad{stop: make(chan struct{})}
	for g := 0; g < workers; g++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				start := time.Now()
				e.Decide(context.Background(), deleteOf("services", fmt.Sprintf("load%d", g), fmt.Sprintf("s%d", i)))
				d := time.Since(start)
				l.calls.Add(1)
				l.mu.Lock()
				l.durs = append(l.durs, d)
				l.max = max(l.max, d)
				l.mu.Unlock()
				time.Sleep(time.Millisecond)
			}
		}()
	}
	return l
}

// finish stops the load and returns the slowest call and the p99.
func (l *faultLoad) finish() (slowest, p99 time.Duration, n int) {
	close(l.stop)
	l.wg.Wait()
	slices.Sort(l.durs)
	if len(l.durs) == 0 {
		return 0, 0, 0
	}
	return l.max, l.durs[len(l.durs)*99/100], len(l.durs)
}

// TestRedisFailures kills, restarts and slows a real redis-server under load
// and checks that no decision waits on it past the timeout, that each rule
// follows its onStoreFailure, that Local admits at most this replica's share,
// that decisions are shared again soon after Redis is back, and that nothing
// leaks goroutines.
func TestRedisFailures(t *testing.T) { testRedisFailures(t, false) }

// TestRedisFailuresAutoPipelined is the same with autopipelining on: a
// stalled shared connection must not stall anyone past the timeout either.
func TestRedisFailuresAutoPipelined(t *testing.T) { testRedisFailures(t, true) }

func testRedisFailures(t *testing.T, autoPipeline bool) {
	const timeout = 100 * time.Millisecond
	// margin is scheduling on top of the timeout: the race detector on a
	// loaded 2-core machine has stretched a 100ms timeout to 400ms, while a
	// decision that waits for a dead Redis waits for seconds.
	const margin = 750 * time.Millisecond
	srv := redistest.Start(t, redistest.Options{})
	goroutines := runtime.NumGoroutine()
	reg := prometheus.NewRegistry()
	ctx := context.Background()
	var rs *RedisStore
	func() {
		e, s := newRedisEngine(t, srv.URL(), "kdtest:faults:", func(c *RedisConfig) {
			c.Timeout = timeout
			c.Replicas = 2
			c.ProbeInterval = 100 * time.Millisecond
			c.Registerer = reg
			c.AutoPipeline = autoPipeline
		})
		rs = s
		if d := e.Decide(ctx, deleteOf("pods", "warm", "p")); !d.Allowed || d.Fallback {
			t.Fatalf("warm-up: %+v", d)
		}

		var killed time.Time
		t.Run("Redis killed mid-load: no decision waits past the timeout", func(t *testing.T) {
			load := startLoad(e, 8)
			waitFor(t, 5*time.Second, func() bool { return load.calls.Load() >= 50 }, "the load to make 50 decisions")
			srv.Kill()
			killed = time.Now()
			waitFor(t, 5*time.Second, s.open.Load, "the store breaker to open")
			opened := load.calls.Load()
			waitFor(t, 5*time.Second, func() bool { return load.calls.Load() >= opened+200 }, "200 decisions with the breaker open")
			slowest, p99, n := load.finish()
			t.Logf("kill under load: %d decisions, slowest %s, p99 %s (timeout %s)", n, slowest, p99, timeout)
			if slowest > timeout+margin {
				t.Fatalf("a decision took %s with Redis killed, want at most timeout %s + %s", slowest, timeout, margin)
			}
			if v := testutil.ToFloat64(s.metrics.state); v != 1 {
				t.Fatalf("store breaker state %v, want 1 (open)", v)
			}
		})

		t.Run("each rule follows its onStoreFailure", func(t *testing.T) {
			start := time.Now()
			d := e.Decide(ctx, deleteOf("nodes", "", "n1"))
			if took := time.Since(start); took > 50*time.Millisecond {
				t.Errorf("with the store breaker open a decision took %s, want an immediate answer", took)
			}
			if d.Allowed || d.Code != http.StatusServiceUnavailable || !errors.Is(d.Err, limiter.ErrStoreUnavailable) || !d.Fallback {
				t.Fatalf("Deny rule: %+v", d)
			}
			for i := 0; i < 50; i++ {
				if d := e.Decide(ctx, deleteOf("services", "x", fmt.Sprintf("s%d", i))); !d.Allowed || !d.Fallback {
					t.Fatalf("Allow rule denied while Redis was down: %+v", d)
				}
			}
			admitted := 0
			for i := 0; i < 40; i++ {
				if d := e.Decide(ctx, deleteOf("pods", "local", fmt.Sprintf("p%d", i))); d.Allowed {
					admitted++
				}
			}
			if admitted != 10 {
				t.Fatalf("Local fallback admitted %d of 40 deletes, want this replica's share: 20/min over 2 replicas = 10", admitted)
			}
			list := &limiter.Attributes{Attributes: policy.Attributes{Verb: "list", Resource: "pods", User: "bob"}, Checks: limiter.CheckRateLimits}
			admitted = 0
			for i := 0; i < 20; i++ {
				if d := e.Decide(ctx, list); d.Allowed {
					admitted++
				}
			}
			if admitted != 5 {
				t.Fatalf("Local rate fallback admitted a burst of %d, want the share 10/2 = 5", admitted)
			}
		})

		t.Run("Redis restarted: shared decisions again within 5s", func(t *testing.T) {
			srv.Restart()
			waitFor(t, 5*time.Second, func() bool { return !e.Decide(ctx, deleteOf("services", "back", "s")).Fallback },
				"shared decisions after Redis came back")
			if v, most := testutil.ToFloat64(s.metrics.fallback), time.Since(killed).Seconds(); v <= 0 || v > most {
				t.Errorf("fallback_seconds_total = %v, want the outage counted (more than 0, at most the %.3fs since the kill)", v, most)
			}
		})

		t.Run("Redis slowed by DEBUG SLEEP: timeouts, not stalls", func(t *testing.T) {
			load := startLoad(e, 8)
			waitFor(t, 5*time.Second, func() bool { return load.calls.Load() >= 50 }, "the load to make 50 decisions")
			sleeper := srv.Client(t)
			// The load runs for the whole 2s Redis sleeps: DEBUG SLEEP
			// answers when Redis wakes up. A decision that waited for Redis
			// would take about 2s; one bounded by the timeout takes 100ms
			// plus scheduling, which the race detector on a loaded machine
			// has stretched to 400ms: half the sleep tells the two apart.
			const asleep = 2 * time.Second
			if err := sleeper.Do(context.Background(), "DEBUG", "SLEEP", "2").Err(); err != nil {
				t.Fatalf("DEBUG SLEEP: %v", err)
			}
			slowest, p99, n := load.finish()
			t.Logf("DEBUG SLEEP 2 under load: %d decisions, slowest %s, p99 %s (timeout %s)", n, slowest, p99, timeout)
			if slowest >= asleep/2 {
				t.Fatalf("a decision took %s with Redis asleep for %s: it waited for Redis instead of timing out after %s", slowest, asleep, timeout)
			}
			if got := testutil.ToFloat64(s.metrics.errors[opBudgets]); got == 0 {
				t.Fatal("no budget call failed while Redis slept")
			}
			waitFor(t, 5*time.Second, func() bool { return !e.Decide(ctx, deleteOf("services", "awake", "s")).Fallback },
				"shared decisions after DEBUG SLEEP ended")
		})
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	_ = rs
	// Every goroutine started by the stores, their probes and clients ends.
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > goroutines+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines: %d before, %d after close:\n%s", goroutines, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRedisReplicasCountsLiveReplicasThroughHeartbeats(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	newStore := func(id string) (*RedisStore, context.CancelFunc) {
		s, err := NewRedisStore(RedisConfig{URL: srv.URL(), KeyPrefix: "kdtest:hb:", ReplicaID: id, HeartbeatInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.Run(ctx); close(done) }()
		return s, func() { cancel(); <-done; _ = s.Close() }
	}
	a, stopA := newStore("a")
	defer stopA()
	if got := a.Replicas(); got != 1 {
		t.Fatalf("one replica: Replicas() = %d", got)
	}
	_, stopB := newStore("b")
	waitFor(t, 2*time.Second, func() bool { return a.Replicas() == 2 }, "replica a to see 2 replicas")
	stopB()
	waitFor(t, 2*time.Second, func() bool { return a.Replicas() == 1 }, "replica a to see 1 replica after b stopped")

	fixed, err := NewRedisStore(RedisConfig{URL: srv.URL(), Replicas: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer fixed.Close()
	if got := fixed.Replicas(); got != 5 {
		t.Fatalf("configured replicas: Replicas() = %d, want 5", got)
	}
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
