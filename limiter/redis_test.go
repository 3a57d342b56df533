package limiter

import (
	"context"
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
	"pgregory.net/rapid"

	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
)

// redisFactory returns a newStoreFunc building RedisStores on opts, each
// with a fresh key prefix so tests never see each other's keys.
func redisFactory(opts func() *redis.UniversalOptions, extra func(*RedisConfig)) newStoreFunc {
	var seq atomic.Int64
	return func(t *testing.T, clk *clocktesting.FakeClock) Store {
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
		s, err := NewRedisStore(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

func singleOpts(srv *redistest.Server) func() *redis.UniversalOptions {
	return func() *redis.UniversalOptions {
		o, err := ParseRedisURL(srv.URL())
		if err != nil {
			panic(err)
		}
		return o
	}
}

func TestRedisStoreSemantics(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	testStoreSemantics(t, redisFactory(singleOpts(srv), nil))
}

func TestRedisStoreSemanticsAutoPipelined(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	testStoreSemantics(t, redisFactory(singleOpts(srv), func(c *RedisConfig) { c.AutoPipeline = true }))
}

func TestRedisStoreOverTLS(t *testing.T) {
	files := redistest.GenerateTLS(t)
	srv := redistest.Start(t, redistest.Options{TLS: &files})
	spec := testSpec([]WindowSpec{{time.Minute, 1}}, BreakerSpec{})
	decide := func(cfg RedisConfig) error {
		cfg.URL, cfg.KeyPrefix, cfg.Timeout = srv.URL(), "kdtest:tls:", 2*time.Second
		s, err := NewRedisStore(cfg)
		if err != nil {
			return err
		}
		defer s.Close()
		return s.Budgets(context.Background(), &BudgetBatch{Checks: []BudgetCheck{{Spec: spec, Key: "k"}}, Commit: true})
	}
	if err := decide(RedisConfig{TLSCAFile: files.CAFile}); err != nil {
		t.Fatalf("rediss:// with the server's CA: %v", err)
	}
	if err := decide(RedisConfig{}); err == nil || !errors.Is(err, ErrStoreUnavailable) || !strings.Contains(err.Error(), "certificate") {
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
	opts := func() *redis.UniversalOptions {
		o, err := ParseRedisURL("redis+sentinel://" + sentinel.Addr() + "/kdmaster/0")
		if err != nil {
			panic(err)
		}
		return o
	}
	testStoreSemantics(t, redisFactory(opts, nil))
	n, err := master.Client(t).DBSize(context.Background()).Result()
	if err != nil || n == 0 {
		t.Fatalf("the master Sentinel names holds %d keys (%v), want the suite's", n, err)
	}
}

func TestRedisStoreSemanticsOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	opts := func() *redis.UniversalOptions {
		o, err := ParseRedisURL(cl.URL())
		if err != nil {
			panic(err)
		}
		return o
	}
	testStoreSemantics(t, redisFactory(opts, nil))
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
		s := redisFactory(opts, nil)(t, clocktesting.NewFakeClock(testEpoch)).(*RedisStore)
		spec := &RateSpec{Name: "spread", ID: "spread@test", QPS: 10, Burst: 5, Interval: 100 * time.Millisecond}
		for i := 0; i < 30; i++ {
			b := &RateBatch{Checks: []RateCheck{{Spec: spec, Key: fmt.Sprintf("user=u%d", i)}}}
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

// TestRedisStoreMatchesMemoryStore drives a memory store and a Redis store
// with the same random operations on the same fake clock and wants every
// result field equal: the Lua script is budget.go, line by line. (Since of a
// Closed breaker is compared only while it is not Closed: both stores forget
// an idle key, the memory store at its next Sweep, Redis when the key expires.)
func TestRedisStoreMatchesMemoryStore(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	newRedis := redisFactory(singleOpts(srv), nil)
	clk := clocktesting.NewFakeClock(testEpoch)
	rs := newRedis(t, clk)
	ms := NewMemoryStore(MemoryConfig{Clock: clk})
	rapid.Check(t, func(rt *rapid.T) {
		var specs []*BudgetSpec
		for i := rapid.IntRange(1, 3).Draw(rt, "rules"); i > 0; i-- {
			var ws []WindowSpec
			length, limit := time.Duration(0), int64(0)
			for j := rapid.IntRange(1, 3).Draw(rt, "windows"); j > 0; j-- {
				length += time.Duration(rapid.IntRange(1, 90).Draw(rt, "lengthS")) * time.Second
				limit += int64(rapid.IntRange(1, 4).Draw(rt, "limitStep"))
				ws = append(ws, WindowSpec{Length: length, Limit: limit})
			}
			br := BreakerSpec{}
			switch rapid.IntRange(0, 2).Draw(rt, "breaker") {
			case 1:
				br = BreakerSpec{Enabled: true, Manual: true}
			case 2:
				br = BreakerSpec{Enabled: true, Cooldown: time.Duration(rapid.IntRange(1, 120).Draw(rt, "cooldownS")) * time.Second,
					HalfOpenLimit: int64(rapid.IntRange(1, 3).Draw(rt, "halfOpen"))}
			}
			specs = append(specs, testSpec(ws, br))
		}
		now := clk.Now().Add(24 * time.Hour)
		for i := rapid.IntRange(1, 60).Draw(rt, "ops"); i > 0; i-- {
			// Nanosecond steps too: the Redis store keeps exact nanoseconds.
			now = now.Add(time.Duration(rapid.Int64Range(0, int64(100*time.Second)).Draw(rt, "stepNs")))
			clk.SetTime(now)
			if rapid.IntRange(0, 20).Draw(rt, "reset") == 0 {
				sp := specs[rapid.IntRange(0, len(specs)-1).Draw(rt, "resetRule")]
				key := rapid.SampledFrom([]string{"a", AllKeys}).Draw(rt, "resetKey")
				if err := ms.ResetBudget(context.Background(), sp, key); err != nil {
					rt.Fatal(err)
				}
				if err := rs.ResetBudget(context.Background(), sp, key); err != nil {
					rt.Fatal(err)
				}
				continue
			}
			var checks []BudgetCheck
			for _, sp := range specs {
				if rapid.Bool().Draw(rt, "matches") {
					checks = append(checks, BudgetCheck{Spec: sp, Key: rapid.SampledFrom([]string{"a", "b"}).Draw(rt, "key"), Shadow: rapid.IntRange(0, 4).Draw(rt, "shadow") == 0})
				}
			}
			if len(checks) == 0 {
				continue
			}
			commit := rapid.IntRange(0, 5).Draw(rt, "dry") != 0
			mb := &BudgetBatch{Checks: checks, Commit: commit}
			rb := &BudgetBatch{Checks: checks, Commit: commit}
			if err := ms.Budgets(context.Background(), mb); err != nil {
				rt.Fatal(err)
			}
			if err := rs.Budgets(context.Background(), rb); err != nil {
				rt.Fatal(err)
			}
			if mb.Admitted != rb.Admitted || !mb.Now.Equal(rb.Now) {
				rt.Fatalf("batch: memory admitted=%v now=%v, redis admitted=%v now=%v", mb.Admitted, mb.Now, rb.Admitted, rb.Now)
			}
			for k := range mb.Results {
				m, r := mb.Results[k], rb.Results[k]
				if m.Allowed != r.Allowed || m.Reason != r.Reason || m.Window != r.Window || m.Used != r.Used ||
					m.RetryAfter != r.RetryAfter || m.Prev != r.Prev || m.State != r.State || (m.State != Closed && !m.Since.Equal(r.Since)) {
					rt.Fatalf("check %d (%s key %s shadow %v commit %v):\nmemory %+v\nredis  %+v", k, checks[k].Spec.ID, checks[k].Key, checks[k].Shadow, commit, m, r)
				}
			}
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
	testOneRoundTrip(t, singleOpts(srv), nil)
}

// testOneRoundTrip counts round trips at the client (a go-redis hook sees
// every command and every pipeline; commands a script runs inside Redis are
// not client commands). flush, when set, drops the scripts from every server
// mid-test: a decision then loads them again (EVALSHA → NOSCRIPT → EVAL).
func testOneRoundTrip(t *testing.T, opts func() *redis.UniversalOptions, flush func()) {
	hook := &roundTrips{}
	s := redisFactory(opts, func(c *RedisConfig) { c.Hooks = []redis.Hook{hook}; c.Clock = nil })(t, nil)
	b1 := testSpec([]WindowSpec{{time.Minute, 20}, {5 * time.Minute, 50}, {time.Hour, 200}, {24 * time.Hour, 1000}}, BreakerSpec{Enabled: true, Manual: true})
	b2 := testSpec([]WindowSpec{{time.Minute, 5}}, BreakerSpec{Enabled: true, Cooldown: time.Minute, HalfOpenLimit: 1})
	r1 := &RateSpec{Name: "r1", ID: "r1@rt", QPS: 100, Burst: 1000, Interval: 10 * time.Millisecond}
	r2 := &RateSpec{Name: "r2", ID: "r2@rt", QPS: 100, Burst: 1000, Interval: 10 * time.Millisecond}
	ctx := context.Background()
	decide := func() {
		b := &BudgetBatch{Checks: []BudgetCheck{{Spec: b1, Key: "namespace=a"}, {Spec: b2, Key: ""}}, Commit: true}
		if err := s.Budgets(ctx, b); err != nil {
			t.Fatal(err)
		}
		r := &RateBatch{Checks: []RateCheck{{Spec: r1, Key: "user=u"}, {Spec: r2, Key: "user=u,userAgent=x"}}}
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
	s := redisFactory(singleOpts(srv), func(c *RedisConfig) { c.Registerer = reg; c.Replicas = 3 })(t, clocktesting.NewFakeClock(testEpoch))
	spec := testSpec([]WindowSpec{{time.Minute, 1}}, BreakerSpec{})
	if err := s.Budgets(context.Background(), &BudgetBatch{Checks: []BudgetCheck{{Spec: spec, Key: "k"}}, Commit: true}); err != nil {
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
	clk := clocktesting.NewFakeClock(testEpoch)
	rs := redisFactory(singleOpts(srv), nil)(t, clk)
	ms := NewMemoryStore(MemoryConfig{Clock: clk})
	day := 24 * time.Hour
	spec := testSpec([]WindowSpec{{40 * day, 3}, {50 * day, 4}}, BreakerSpec{Enabled: true, Cooldown: 7 * day, HalfOpenLimit: 1})
	for i, step := range []time.Duration{0, 20*day + 1, 25*day + 7, 30 * day, time.Nanosecond, 10 * day, 45*day + 3, 60 * day, 100 * day} {
		clk.Step(step)
		mb := &BudgetBatch{Checks: []BudgetCheck{{Spec: spec, Key: "k"}}, Commit: true}
		rb := &BudgetBatch{Checks: []BudgetCheck{{Spec: spec, Key: "k"}}, Commit: true}
		if err := ms.Budgets(context.Background(), mb); err != nil {
			t.Fatal(err)
		}
		if err := rs.Budgets(context.Background(), rb); err != nil {
			t.Fatal(err)
		}
		m, r := mb.Results[0], rb.Results[0]
		if m.Allowed != r.Allowed || m.Used != r.Used || m.RetryAfter != r.RetryAfter || m.State != r.State || !mb.Now.Equal(rb.Now) {
			t.Fatalf("request %d at +%s:\nmemory %+v\nredis  %+v", i, clk.Now().Sub(testEpoch), m, r)
		}
		if i == 6 { // +130 days, the entry from +85 days still in the 50-day window: the base has moved
			h, _ := rs.(*RedisStore).budgetKeys(spec, "k")
			base, err := srv.Client(t).HGet(context.Background(), h, "b").Int64()
			if err != nil || base < testEpoch.Add(100*day).Unix() {
				t.Fatalf("base second %d (%v), want it moved past +100 days", base, err)
			}
		}
	}
}
