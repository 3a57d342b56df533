package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	clocktesting "k8s.io/utils/clock/testing"
	"pgregory.net/rapid"

	"github.com/kubedefender/kubedefender/internal/testwait"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
	"github.com/kubedefender/kubedefender/limiter/storetest"
)

// TestCoalescedBatchesAreJudgedOneAfterAnother: a script call that judges
// several batches (what the store sends when decisions queue) decides each
// exactly as the memory store decides them one after the other at that
// instant: a later batch sees what an earlier one charged, a repeat of an
// earlier batch's charge-once key is a repeat, a dry run charges nothing.
func TestCoalescedBatchesAreJudgedOneAfterAnother(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	clk := clocktesting.NewFakeClock(storetest.Epoch)
	rs := redisFactory(urlOpts(srv.URL()), nil)(t, clk).(*RedisStore)
	ms := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk})
	rapid.Check(t, func(rt *rapid.T) {
		specs := storetest.DrawSpecs(rt)
		once := []string{"", "", "r1-" + specs[0].ID, "r2-" + specs[0].ID}
		now := clk.Now().Add(24 * time.Hour)
		for round := rapid.IntRange(1, 12).Draw(rt, "rounds"); round > 0; round-- {
			now = now.Add(time.Duration(rapid.Int64Range(0, int64(30*time.Second)).Draw(rt, "stepNs")))
			clk.SetTime(now)
			var mbs, rbs []*limiter.BudgetBatch
			for i := rapid.IntRange(1, 8).Draw(rt, "batches"); i > 0; i-- {
				var checks []limiter.BudgetCheck
				for _, sp := range specs {
					if rapid.Bool().Draw(rt, "matches") {
						checks = append(checks, limiter.BudgetCheck{Spec: sp, Key: rapid.SampledFrom([]string{"a", "b"}).Draw(rt, "key"),
							Shadow: rapid.IntRange(0, 4).Draw(rt, "shadow") == 0, Cost: int64(rapid.IntRange(1, 3).Draw(rt, "cost"))})
					}
				}
				if len(checks) == 0 {
					continue
				}
				b := limiter.BudgetBatch{Checks: checks, Commit: rapid.IntRange(0, 5).Draw(rt, "dry") != 0,
					Once: rapid.SampledFrom(once).Draw(rt, "once"), OnceTTL: 20 * time.Second}
				mb, rb := b, b
				mbs, rbs = append(mbs, &mb), append(rbs, &rb)
			}
			if len(mbs) == 0 {
				continue
			}
			for _, mb := range mbs {
				if err := ms.Budgets(context.Background(), mb); err != nil {
					rt.Fatal(err)
				}
			}
			group := make([]*budgetCall, len(rbs))
			for i, rb := range rbs {
				group[i] = rs.getCall()
				group[i].deadline = time.Now().Add(10 * time.Second)
				rs.encode(group[i], rb)
			}
			rs.runGroup(context.Background(), group)
			for i, c := range group {
				if c.err != nil {
					rt.Fatalf("batch %d of %d: %v", i, len(group), c.err)
				}
				mb, rb := mbs[i], rbs[i]
				if mb.Admitted != rb.Admitted || mb.Repeat != rb.Repeat || !mb.Now.Equal(rb.Now) {
					rt.Fatalf("batch %d of %d: memory admitted=%v repeat=%v now=%v, redis admitted=%v repeat=%v now=%v",
						i, len(group), mb.Admitted, mb.Repeat, mb.Now, rb.Admitted, rb.Repeat, rb.Now)
				}
				for k := range mb.Results {
					if m, r := mb.Results[k], rb.Results[k]; !storetest.SameResult(m, r) {
						rt.Fatalf("batch %d of %d, check %d (%s key %s):\nmemory %+v\nredis  %+v", i, len(group), k, mb.Checks[k].Spec.ID, mb.Checks[k].Key, m, r)
					}
				}
			}
		}
	})
}

// gate holds every budget script call at the client until released, and
// counts those it holds.
type gate struct {
	held  atomic.Int32
	after bool // hold once the answer is in, not before sending
	mu    sync.Mutex
	ch    chan struct{}
}

// newGate returns a gate that lets calls through until armed.
func newGate(after bool) *gate {
	ch := make(chan struct{})
	close(ch)
	return &gate{after: after, ch: ch}
}

// arm holds the calls from now on.
func (g *gate) arm() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held.Store(0)
	g.ch = make(chan struct{})
}

// wait blocks until the calls held now are released.
func (g *gate) wait() {
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	g.held.Add(1)
	<-ch
}

// open releases the calls held now, and holds the next ones unless for
// good.
func (g *gate) open(forGood bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held.Store(0)
	close(g.ch)
	if !forGood {
		g.ch = make(chan struct{})
	}
}

func (g *gate) DialHook(next redis.DialHook) redis.DialHook { return next }
func (g *gate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); name != "evalsha" && name != "eval" {
			return next(ctx, cmd)
		}
		if !g.after {
			g.wait()
			return next(ctx, cmd)
		}
		err := next(ctx, cmd)
		g.wait()
		return err
	}
}
func (g *gate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// coalescingStore is a store whose budget script calls wait at g (armed),
// with its metrics in reg and its timers on timers (calls in flight never
// look slow unless the test steps it); one decision has loaded the script
// already.
func coalescingStore(t *testing.T, g *gate) (s *RedisStore, reg *prometheus.Registry, timers *clocktesting.FakeClock) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	reg = prometheus.NewRegistry()
	clk := clocktesting.NewFakeClock(storetest.Epoch)
	timers = clocktesting.NewFakeClock(time.Now())
	s = redisFactory(urlOpts(srv.URL()), func(c *RedisConfig) { c.Hooks, c.Registerer, c.TimerClock = []redis.Hook{g}, reg, timers })(t, clk).(*RedisStore)
	warm := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1}}, limiter.BreakerSpec{})
	if err := s.Budgets(context.Background(), &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: warm, Key: "k"}}}); err != nil {
		t.Fatal(err)
	}
	g.arm()
	return s, reg, timers
}

func queued(s *RedisStore) int {
	s.coal.mu.Lock()
	defer s.coal.mu.Unlock()
	return len(s.coal.queue)
}

// TestDecisionsThatQueueShareScriptCalls: while both call slots are busy,
// decisions queue and go in shared calls of at most maxGroupCalls; the
// budget is kept exactly.
func TestDecisionsThatQueueShareScriptCalls(t *testing.T) {
	g := newGate(false)
	s, reg, _ := coalescingStore(t, g)
	spec := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 50}}, limiter.BreakerSpec{Enabled: true, Manual: true})
	const n = 200
	results := make([]*limiter.BudgetBatch, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		results[i] = &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: "ns"}}, Commit: true}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Budgets(context.Background(), results[i])
		}()
	}
	testwait.Until(t, "both slots are held and the rest queue", func() bool {
		return g.held.Load() == maxBudgetGroups && queued(s) == n-maxBudgetGroups
	})
	g.open(true)
	wg.Wait()
	admitted := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("decision %d: %v", i, errs[i])
		}
		if results[i].Admitted {
			admitted++
		}
	}
	if admitted != 50 {
		t.Errorf("%d of %d decisions admitted by a budget of 50", admitted, n)
	}
	// the warm-up's call, the two held ones alone, then the 198 queued in
	// calls of at most 64 (each slot takes what is queued when it frees)
	count, sum := histogram(t, reg, "kubedefender_store_budget_decisions_per_call")
	if sum != 1+n {
		t.Errorf("the calls judged %v decisions, want %d", sum, 1+n)
	}
	if want := uint64(1 + maxBudgetGroups + (n-maxBudgetGroups+maxGroupCalls-1)/maxGroupCalls); count != want {
		t.Errorf("%d decisions took %d script calls, want %d", n, count-1, want-1)
	}
}

// TestADecisionGivenUpOnIsDroppedFromItsCall: a caller whose context ends
// while its decision waits gets ErrStoreUnavailable at once; a decision
// given up on before its call is sent is never judged, and one given up on
// while its answer travels is skipped: the others of the call are answered.
func TestADecisionGivenUpOnIsDroppedFromItsCall(t *testing.T) {
	for _, after := range []bool{false, true} {
		name := "before its call is sent"
		if after {
			name = "while its answer travels"
		}
		t.Run(name, func(t *testing.T) {
			g := newGate(after)
			s, _, _ := coalescingStore(t, g)
			spec := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 100}}, limiter.BreakerSpec{})
			decide := func(ctx context.Context, key string) (*limiter.BudgetBatch, <-chan error) {
				b := &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: key}}, Commit: true}
				done := make(chan error, 1)
				go func() { done <- s.Budgets(ctx, b) }()
				return b, done
			}
			// hold both slots, then queue three on keys a, b, a: b is given up on
			var holders []<-chan error
			for range maxBudgetGroups {
				_, d := decide(context.Background(), "holder")
				holders = append(holders, d)
			}
			testwait.Until(t, "both slots are held", func() bool { return g.held.Load() == maxBudgetGroups })
			first, d1 := decide(context.Background(), "a")
			testwait.Until(t, "the first queues", func() bool { return queued(s) == 1 })
			ctx, cancel := context.WithCancel(context.Background())
			_, d2 := decide(ctx, "b")
			testwait.Until(t, "the second queues", func() bool { return queued(s) == 2 })
			third, d3 := decide(context.Background(), "a")
			testwait.Until(t, "the third queues", func() bool { return queued(s) == 3 })
			if after {
				// a freed slot takes the three in one call, held once its
				// answer is in
				g.open(false)
				testwait.Until(t, "the three queued are judged", func() bool { return g.held.Load() == 1 })
			}
			cancel()
			if err := <-d2; !errors.Is(err, limiter.ErrStoreUnavailable) || !errors.Is(err, context.Canceled) {
				t.Fatalf("the decision given up on: %v, want ErrStoreUnavailable and context.Canceled", err)
			}
			g.open(true)
			for _, d := range append(holders, d1, d3) {
				if err := <-d; err != nil {
					t.Fatal(err)
				}
			}
			if !first.Admitted || !third.Admitted || first.Results[0].Used[0] != 1 || third.Results[0].Used[0] != 2 {
				t.Fatalf("the first and third on key a: %+v, %+v; want admitted, 1 then 2 used", first.Results, third.Results)
			}
			// b was charged only when its call had been sent already
			b := &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: "b"}}}
			if err := s.Budgets(context.Background(), b); err != nil {
				t.Fatal(err)
			}
			want := int64(0)
			if after {
				want = 1
			}
			if got := b.Results[0].Used[0]; got != want {
				t.Errorf("key b holds %d tokens, want %d", got, want)
			}
		})
	}
}

// histogram returns the sample count and sum of the histogram name in reg.
func histogram(t *testing.T, reg *prometheus.Registry, name string) (uint64, float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	t.Fatalf("no %s", name)
	return 0, 0
}

// TestABatchOfManyChecksIsJudgedWhole: a batch of more checks than a shared
// call takes (and more keys than one MGET reads) still goes, alone, and is
// judged as the memory store judges it.
func TestABatchOfManyChecksIsJudgedWhole(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	clk := clocktesting.NewFakeClock(storetest.Epoch)
	rs := redisFactory(urlOpts(srv.URL()), nil)(t, clk)
	ms := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk})
	spec := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 2}}, limiter.BreakerSpec{Enabled: true, Manual: true})
	var checks []limiter.BudgetCheck
	for i := range 1500 {
		checks = append(checks, limiter.BudgetCheck{Spec: spec, Key: fmt.Sprintf("k%d", i%1499)}) // k0 twice
	}
	for round := range 3 {
		mb := &limiter.BudgetBatch{Checks: checks, Commit: true}
		rb := &limiter.BudgetBatch{Checks: checks, Commit: true}
		if err := ms.Budgets(context.Background(), mb); err != nil {
			t.Fatal(err)
		}
		if err := rs.Budgets(context.Background(), rb); err != nil {
			t.Fatal(err)
		}
		if mb.Admitted != rb.Admitted || len(rb.Results) != len(checks) {
			t.Fatalf("round %d: memory admitted=%v, redis admitted=%v with %d results", round, mb.Admitted, rb.Admitted, len(rb.Results))
		}
		for k := range mb.Results {
			if m, r := mb.Results[k], rb.Results[k]; m.Allowed != r.Allowed || m.Used != r.Used || m.State != r.State || m.Reason != r.Reason {
				t.Fatalf("round %d, check %d: memory %+v, redis %+v", round, k, m, r)
			}
		}
	}
}

// TestARefusedBatchLeavesTheOthersOfItsCallAlone: a batch whose key the
// script refuses (another layout, or not a whole header) gets its error; the
// batches before and after it in the same call are judged, charged and
// answered.
func TestARefusedBatchLeavesTheOthersOfItsCallAlone(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rc := srv.Client(t)
	clk := clocktesting.NewFakeClock(storetest.Epoch)
	s := redisFactory(urlOpts(srv.URL()), nil)(t, clk).(*RedisStore)
	spec := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 5}}, limiter.BreakerSpec{})
	v3 := make([]byte, 48)
	v3[0] = 3
	for name, bad := range map[string]string{"another layout": string(v3), "short": "x", "torn entry": string(make([]byte, 41))} {
		t.Run(name, func(t *testing.T) {
			if err := rc.Set(context.Background(), s.budgetKey(spec, "bad"), bad, 0).Err(); err != nil {
				t.Fatal(err)
			}
			if name == "torn entry" {
				// a v2 header (widths 4 and 1) and one byte of an entry
				torn := []byte(bad)
				torn[0], torn[1], torn[2] = 2, 4, 1
				if err := rc.Set(context.Background(), s.budgetKey(spec, "bad"), string(torn), 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
			var group []*budgetCall
			var batches []*limiter.BudgetBatch
			for _, key := range []string{"before-" + name, "bad", "after-" + name} {
				b := &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: key}}, Commit: true}
				c := s.getCall()
				c.deadline = time.Now().Add(10 * time.Second)
				s.encode(c, b)
				group, batches = append(group, c), append(batches, b)
			}
			s.runGroup(context.Background(), group)
			if err := group[1].err; !errors.Is(err, limiter.ErrStoreUnavailable) || !strings.Contains(err.Error(), "not in layout version 2") {
				t.Errorf("the refused batch: %v", err)
			}
			for _, i := range []int{0, 2} {
				if group[i].err != nil || !batches[i].Admitted || batches[i].Results[0].Used[0] != 1 {
					t.Errorf("batch %d of the call: %v, %+v", i, group[i].err, batches[i].Results)
				}
			}
		})
	}
}

// TestAQueuedBatchGivenUpOnIsNotReadAgain: once its caller has given up, a
// queued decision's batch is the caller's again (the engine reuses it); the
// slots that take the queue never read it (run with -race).
func TestAQueuedBatchGivenUpOnIsNotReadAgain(t *testing.T) {
	g := newGate(false)
	s, _, _ := coalescingStore(t, g)
	spec := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 100}}, limiter.BreakerSpec{})
	var holders []chan error
	for range maxBudgetGroups {
		d := make(chan error, 1)
		go func() {
			d <- s.Budgets(context.Background(), &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: "h"}}, Commit: true})
		}()
		holders = append(holders, d)
	}
	testwait.Until(t, "both slots are held", func() bool { return g.held.Load() == maxBudgetGroups })
	b := &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: "x"}}, Commit: true}
	ctx, cancel := context.WithCancel(context.Background())
	d := make(chan error, 1)
	go func() { d <- s.Budgets(ctx, b) }()
	testwait.Until(t, "it queues", func() bool { return queued(s) == 1 })
	cancel()
	if err := <-d; !errors.Is(err, context.Canceled) {
		t.Fatalf("given up on: %v", err)
	}
	done := make(chan struct{})
	go func() { // the caller reuses its batch
		defer close(done)
		for i := 0; queued(s) > 0 || i < 100; i++ {
			b.Reset()
			for range 600 {
				b.Checks = append(b.Checks, limiter.BudgetCheck{Spec: spec, Key: "y"})
			}
		}
	}()
	g.open(true)
	for _, h := range holders {
		if err := <-h; err != nil {
			t.Fatal(err)
		}
	}
	<-done
	testwait.Until(t, "the slots are free", func() bool {
		s.coal.mu.Lock()
		defer s.coal.mu.Unlock()
		return s.coal.inflight == 0
	})
}

// TestASlowRedisGetsMoreCallSlots: when both slots are busy and no call has
// started for Timeout/4, a new decision opens another slot and takes the
// queue with it, so decisions do not time out waiting for a slow Redis.
func TestASlowRedisGetsMoreCallSlots(t *testing.T) {
	g := newGate(false)
	s, _, timers := coalescingStore(t, g)
	spec := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 100}}, limiter.BreakerSpec{})
	decide := func(key string) (*limiter.BudgetBatch, chan error) {
		b := &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: key}}, Commit: true}
		d := make(chan error, 1)
		go func() { d <- s.Budgets(context.Background(), b) }()
		return b, d
	}
	var waits []chan error
	for range maxBudgetGroups {
		_, d := decide("h")
		waits = append(waits, d)
	}
	testwait.Until(t, "both slots are held", func() bool { return g.held.Load() == maxBudgetGroups })
	first, d1 := decide("a")
	testwait.Until(t, "the next decision queues", func() bool { return queued(s) == 1 })
	timers.Step(s.timeout/4 - 1)
	_, d2 := decide("b")
	testwait.Until(t, "another queues while the calls are young", func() bool { return queued(s) == 2 })
	timers.Step(1)
	last, d3 := decide("a")
	testwait.Until(t, "a third slot takes the queue", func() bool { return g.held.Load() == maxBudgetGroups+1 && queued(s) == 0 })
	g.open(true)
	for _, d := range append(waits, d1, d2, d3) {
		if err := <-d; err != nil {
			t.Fatal(err)
		}
	}
	if first.Results[0].Used[0] != 1 || last.Results[0].Used[0] != 2 {
		t.Errorf("key a: %d then %d used, want 1 then 2 (the queue's order)", first.Results[0].Used[0], last.Results[0].Used[0])
	}
}
