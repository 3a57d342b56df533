package redisstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
	"github.com/kubedefender/kubedefender/limiter/storetest"
)

// redisFactory returns a storetest.NewStore building RedisStores on opts, each
// with a fresh key prefix so tests never see each other's keys.
func redisFactory(opts func() *redis.UniversalOptions, extra func(*RedisConfig)) storetest.NewStore {
	var seq atomic.Int64
	return func(t *testing.T, clk *clocktesting.FakeClock) limiter.Store {
		cfg := RedisConfig{
			Options:   opts(),
			KeyPrefix: fmt.Sprintf("kdtest:%s:%d:", strings.ReplaceAll(t.Name(), "/", "."), seq.Add(1)),
			Timeout:   2 * time.Second, // a loaded CI machine must not fail semantic tests on latency
		}
		if clk != nil {
			cfg.Clock = clk
		}
		if extra != nil {
			extra(&cfg)
		}
		return openStore(t, cfg)
	}
}

// openStore is NewRedisStore(cfg), closed when the test ends.
func openStore(t testing.TB, cfg RedisConfig) *RedisStore {
	t.Helper()
	s, err := NewRedisStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// urlOpts returns the options of url, parsed afresh for each store.
func urlOpts(url string) func() *redis.UniversalOptions {
	return func() *redis.UniversalOptions {
		o, err := ParseRedisURL(url)
		if err != nil {
			panic(err)
		}
		return o
	}
}

func TestRedisStoreSemantics(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	storetest.Run(t, redisFactory(urlOpts(srv.URL()), nil))
}

// TestRedisStoreAgreesWithMemoryStore runs the model-based checks of
// storetest: the memory store and this one, on one fake clock, must decide
// alike (store batches, the bounds of validation, random valid policies).
func TestRedisStoreAgreesWithMemoryStore(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	storetest.Agree(t, redisFactory(urlOpts(srv.URL()), nil))
}

func TestRedisStoreSemanticsAutoPipelined(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	storetest.Run(t, redisFactory(urlOpts(srv.URL()), func(c *RedisConfig) { c.AutoPipeline = true }))
}

func TestRedisStoreOverTLS(t *testing.T) {
	files := redistest.GenerateTLS(t)
	srv := redistest.Start(t, redistest.Options{TLS: &files})
	spec := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1}}, limiter.BreakerSpec{})
	decide := func(cfg RedisConfig) error {
		// A handshake that loads the system roots can take longer than the
		// 250ms default dial timeout on a loaded machine under -race.
		cfg.URL, cfg.KeyPrefix, cfg.Timeout, cfg.DialTimeout = srv.URL(), "kdtest:tls:", 2*time.Second, 2*time.Second
		s, err := NewRedisStore(cfg)
		if err != nil {
			return err
		}
		defer s.Close()
		return s.Budgets(context.Background(), &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: "k"}}, Commit: true})
	}
	if err := decide(RedisConfig{TLSCAFile: files.CAFile}); err != nil {
		t.Fatalf("rediss:// with the server's CA: %v", err)
	}
	if err := decide(RedisConfig{}); err == nil || !errors.Is(err, limiter.ErrStoreUnavailable) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("rediss:// trusting only the system roots: got %v, want a certificate error wrapped in ErrStoreUnavailable", err)
	}
	if err := decide(RedisConfig{TLSInsecureSkipVerify: true}); err != nil {
		t.Fatalf("rediss:// with verification off: %v", err)
	}
	if _, err := NewRedisStore(RedisConfig{URL: srv.URL(), TLSCAFile: files.KeyFile}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("a CA file without a certificate: got %v", err)
	}
}

func TestRedisStoreSemanticsThroughSentinel(t *testing.T) {
	master := redistest.Start(t, redistest.Options{})
	sentinel := redistest.StartSentinel(t, "kdmaster", master)
	opts := urlOpts("redis+sentinel://" + sentinel.Addr() + "/kdmaster/0")
	storetest.Run(t, redisFactory(opts, nil))
	n, err := master.Client(t).DBSize(context.Background()).Result()
	if err != nil || n == 0 {
		t.Fatalf("the master Sentinel names holds %d keys (%v), want the suite's", n, err)
	}
}

func TestRedisStoreSemanticsOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	opts := urlOpts(cl.URL())
	storetest.Run(t, redisFactory(opts, nil))
	t.Run("one round trip per decision, and scripts reload after SCRIPT FLUSH", func(t *testing.T) {
		testOneRoundTrip(t, opts, func() {
			for _, srv := range cl.Servers {
				if err := srv.Client(t).ScriptFlush(context.Background()).Err(); err != nil {
					t.Fatal(err)
				}
			}
		})
	})
	t.Run("rate keys spread over the masters", func(t *testing.T) {
		s := redisFactory(opts, nil)(t, clocktesting.NewFakeClock(storetest.Epoch)).(*RedisStore)
		spec := &limiter.RateSpec{Name: "spread", ID: "spread@test", QPS: 10, Burst: 5, Interval: 100 * time.Millisecond}
		for i := 0; i < 30; i++ {
			b := &limiter.RateBatch{Checks: []limiter.RateCheck{{Spec: spec, Key: fmt.Sprintf("user=u%d", i)}}}
			if err := s.Rates(context.Background(), b); err != nil || !b.Results[0].Allowed {
				t.Fatalf("rate %d: %v %+v", i, err, b.Results)
			}
		}
		used := 0
		for _, srv := range cl.Servers {
			n, err := srv.Client(t).DBSize(context.Background()).Result()
			if err != nil {
				t.Fatal(err)
			}
			if n > 0 {
				used++
			}
		}
		if used < 2 {
			t.Fatalf("30 rate keys landed on %d of 3 masters, want them spread", used)
		}
	})
}

// roundTrips counts commands and pipelines the client sends.
type roundTrips struct{ n atomic.Int64 }

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

func TestRedisStoreOneRoundTripPerDecision(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	testOneRoundTrip(t, urlOpts(srv.URL()), nil)
}

// testOneRoundTrip counts round trips at the client (a go-redis hook sees
// every command and every pipeline; commands a script runs inside Redis are
// not client commands). flush, when set, drops the scripts from every server
// mid-test: a decision then loads them again (EVALSHA → NOSCRIPT → EVAL).
func testOneRoundTrip(t *testing.T, opts func() *redis.UniversalOptions, flush func()) {
	hook := &roundTrips{}
	s := redisFactory(opts, func(c *RedisConfig) { c.Hooks = []redis.Hook{hook}; c.Clock = nil })(t, nil)
	b1 := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 20}, {Length: 5 * time.Minute, Limit: 50}, {Length: time.Hour, Limit: 200}, {Length: 24 * time.Hour, Limit: 1000}}, limiter.BreakerSpec{Enabled: true, Manual: true})
	b2 := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 5}}, limiter.BreakerSpec{Enabled: true, Cooldown: time.Minute, HalfOpenLimit: 1})
	r1 := &limiter.RateSpec{Name: "r1", ID: "r1@rt", QPS: 100, Burst: 1000, Interval: 10 * time.Millisecond}
	r2 := &limiter.RateSpec{Name: "r2", ID: "r2@rt", QPS: 100, Burst: 1000, Interval: 10 * time.Millisecond}
	ctx := context.Background()
	decide := func() {
		b := &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: b1, Key: "namespace=a"}, {Spec: b2, Key: ""}}, Commit: true}
		if err := s.Budgets(ctx, b); err != nil {
			t.Fatal(err)
		}
		r := &limiter.RateBatch{Checks: []limiter.RateCheck{{Spec: r1, Key: "user=u"}, {Spec: r2, Key: "user=u,userAgent=x"}}}
		if err := s.Rates(ctx, r); err != nil {
			t.Fatal(err)
		}
		if len(r.Results) != 2 || !r.Results[0].Allowed || !r.Results[1].Allowed {
			t.Fatalf("rate results %+v", r.Results)
		}
	}
	decide() // connects and loads the scripts (EVALSHA → NOSCRIPT → EVAL)
	before := hook.n.Load()
	const n = 10
	for i := 0; i < n; i++ {
		decide()
	}
	if got := hook.n.Load() - before; got != 2*n {
		t.Fatalf("%d decisions (a budget batch of 2 rules × 4+1 windows and a rate batch of 2 rules each) took %d round trips, want %d", 2*n, got, 2*n)
	}
	if flush != nil {
		flush()
		decide()
		before = hook.n.Load()
		decide()
		if got := hook.n.Load() - before; got != 2 {
			t.Fatalf("after the scripts were reloaded 2 decisions took %d round trips, want 2", got)
		}
	}
}

func TestRedisStoreMetrics(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	reg := prometheus.NewRegistry()
	s := redisFactory(urlOpts(srv.URL()), func(c *RedisConfig) { c.Registerer = reg; c.Replicas = 3 })(t, clocktesting.NewFakeClock(storetest.Epoch))
	spec := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1}}, limiter.BreakerSpec{})
	if err := s.Budgets(context.Background(), &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: "k"}}, Commit: true}); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP kubedefender_store_breaker_state State of the breaker around Redis: 0 closed (shared decisions), 1 open (onStoreFailure decides).
# TYPE kubedefender_store_breaker_state gauge
kubedefender_store_breaker_state 0
# HELP kubedefender_store_fallback_seconds_total Time spent with the store breaker open, deciding by onStoreFailure.
# TYPE kubedefender_store_fallback_seconds_total counter
kubedefender_store_fallback_seconds_total 0
# HELP kubedefender_store_replicas Replicas sharing the store: the configured count, or the live ones seen through heartbeats.
# TYPE kubedefender_store_replicas gauge
kubedefender_store_replicas 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kubedefender_store_breaker_state", "kubedefender_store_fallback_seconds_total", "kubedefender_store_replicas"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "kubedefender_store_request_duration_seconds", "kubedefender_store_errors_total"); err != nil || n != 6 {
		t.Fatalf("latency and error series: %d (%v), want 3 ops each", n, err)
	}
}

// TestRedisStoreRebasesLongLivedLogs: log scores are nanoseconds since a
// per-key base second, moved forward after 46 days; the answers must not
// change across the move (windows here are longer than that).
func TestRedisStoreRebasesLongLivedLogs(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	clk := clocktesting.NewFakeClock(storetest.Epoch)
	rs := redisFactory(urlOpts(srv.URL()), nil)(t, clk)
	ms := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk})
	day := 24 * time.Hour
	spec := storetest.Spec([]limiter.WindowSpec{{Length: 40 * day, Limit: 3}, {Length: 50 * day, Limit: 4}}, limiter.BreakerSpec{Enabled: true, Cooldown: 7 * day, HalfOpenLimit: 1})
	for i, step := range []time.Duration{0, 20*day + 1, 25*day + 7, 30 * day, time.Nanosecond, 10 * day, 45*day + 3, 60 * day, 100 * day} {
		clk.Step(step)
		mb := &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: "k"}}, Commit: true}
		rb := &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: "k"}}, Commit: true}
		if err := ms.Budgets(context.Background(), mb); err != nil {
			t.Fatal(err)
		}
		if err := rs.Budgets(context.Background(), rb); err != nil {
			t.Fatal(err)
		}
		m, r := mb.Results[0], rb.Results[0]
		if m.Allowed != r.Allowed || m.Used != r.Used || m.RetryAfter != r.RetryAfter || m.State != r.State || !mb.Now.Equal(rb.Now) {
			t.Fatalf("request %d at +%s:\nmemory %+v\nredis  %+v", i, clk.Now().Sub(storetest.Epoch), m, r)
		}
		if i == 6 { // +130 days, the entry from +85 days still in the 50-day window: the base has moved
			k, _, _ := rs.(*RedisStore).budgetKeys(spec, "k")
			v, err := srv.Client(t).Get(context.Background(), k).Result()
			var base int64
			if err == nil && len(v) >= 12 {
				base = int64(binary.LittleEndian.Uint64([]byte(v[4:12]))) // the header's base second (budgetlua.go)
			}
			if err != nil || base < storetest.Epoch.Add(100*day).Unix() {
				t.Fatalf("base second %d (%v), want it moved past +100 days", base, err)
			}
		}
	}
}

func TestBackendCarriesTheStoreItsReplicasAndItsClose(t *testing.T) {
	if _, err := NewBackend(RedisConfig{}); err == nil {
		t.Fatal("a backend without a URL was built")
	}
	srv := redistest.Start(t, redistest.Options{})
	b, err := NewBackend(RedisConfig{URL: srv.URL(), Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Store.(*RedisStore); !ok || b.Mode != "redis" || b.Replicas() != 3 {
		t.Fatalf("redis backend: store %T, mode %q, replicas %d; want a *RedisStore, redis, 3", b.Store, b.Mode, b.Replicas())
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := b.Store.Budgets(context.Background(), &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1}}, limiter.BreakerSpec{}), Key: "k"}}}); err == nil {
		t.Fatal("a decision after Close succeeded; Close did not close the client")
	}
}
