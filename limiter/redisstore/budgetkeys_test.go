package redisstore

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
	"github.com/kubedefender/kubedefender/limiter/storetest"
)

// oldLayout writes one budget key as the store wrote it before the v2
// layout: a hash (base second, breaker) and a sorted set with one member per
// token, scored in ns since the base.
type oldLayout struct {
	state          limiter.BreakerState
	since          time.Time
	tokens         []time.Duration // since the base second
	base, halfOpen int64
}

func (o oldLayout) write(t *testing.T, rc *redis.Client, s *RedisStore, spec *limiter.BudgetSpec, key string) {
	t.Helper()
	ctx := context.Background()
	_, h, z := s.budgetKeys(spec, key)
	if err := rc.HSet(ctx, h, "b", o.base, "st", int(o.state), "ss", o.since.Unix(), "sn", o.since.Nanosecond(), "ho", o.halfOpen, "q", len(o.tokens)).Err(); err != nil {
		t.Fatal(err)
	}
	for i, d := range o.tokens {
		if err := rc.ZAdd(ctx, z, redis.Z{Score: float64(d), Member: i + 1}).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBudgetKeysOfTheLayoutBeforeAreReadAndMoved: an upgrade keeps what
// the hash-and-sorted-set layout held (the log and the breaker): the script
// judges it, and its first write moves it to the v2 string; status, reset
// and carry find such keys too.
func TestBudgetKeysOfTheLayoutBeforeAreReadAndMoved(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rc := srv.Client(t)
	ctx := context.Background()
	base := storetest.Epoch.Unix()
	minute := []limiter.WindowSpec{{Length: time.Minute, Limit: 5}}
	newStore := func(t *testing.T) (*RedisStore, *clocktesting.FakeClock) {
		clk := clocktesting.NewFakeClock(storetest.Epoch.Add(3 * time.Second))
		return redisFactory(urlOpts(srv.URL()), nil)(t, clk).(*RedisStore), clk
	}
	exists := func(t *testing.T, keys ...string) int64 {
		n, err := rc.Exists(ctx, keys...).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("its log is counted, and the first charge moves it to one v2 string", func(t *testing.T) {
		s, _ := newStore(t)
		spec := storetest.Spec(minute, limiter.BreakerSpec{})
		// two tokens at one instant: they become one run-length entry
		oldLayout{base: base, tokens: []time.Duration{0, time.Second, time.Second}}.write(t, rc, s, spec, "k")
		dry := storetest.Take(t, s, false, limiter.BudgetCheck{Spec: spec, Key: "k"})
		if got := dry.Results[0].Used[0]; got != 3 {
			t.Fatalf("a dry run counts %d tokens of the layout before, want 3", got)
		}
		st, err := s.InspectBudget(ctx, spec, 10)
		if err != nil || len(st) != 1 || st[0].Key != "k" || st[0].Used[0] != 3 {
			t.Fatalf("status of a key of the layout before: %+v, %v; want k with 3 used", st, err)
		}
		k, h, z := s.budgetKeys(spec, "k")
		if exists(t, k) != 0 || exists(t, h, z) != 2 {
			t.Fatal("a dry run or a status read wrote the key")
		}
		for i, want := range []bool{true, true, false} {
			b := storetest.Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k"})
			if b.Admitted != want || b.Results[0].Used[0] != min(int64(4+i), 5) {
				t.Fatalf("charge %d: admitted %v used %d, want %v and %d", i, b.Admitted, b.Results[0].Used[0], want, min(4+i, 5))
			}
		}
		if exists(t, k) != 1 || exists(t, h, z) != 0 {
			t.Fatal("after a charge the key is not one v2 string with the old keys gone")
		}
	})

	t.Run("an Open Manual breaker still denies", func(t *testing.T) {
		s, _ := newStore(t)
		spec := storetest.Spec(minute, limiter.BreakerSpec{Enabled: true, Manual: true})
		oldLayout{base: base, state: limiter.Open, since: storetest.Epoch.Add(time.Second)}.write(t, rc, s, spec, "k")
		b := storetest.Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "k"})
		if b.Admitted || b.Results[0].Reason != limiter.BreakerIsOpen || !b.Results[0].Since.Equal(storetest.Epoch.Add(time.Second)) {
			t.Fatalf("result %+v, want a denial by the breaker Open since +1s", b.Results[0])
		}
	})

	t.Run("a reset finds and deletes it", func(t *testing.T) {
		s, _ := newStore(t)
		spec := storetest.Spec(minute, limiter.BreakerSpec{})
		oldLayout{base: base, tokens: []time.Duration{0}}.write(t, rc, s, spec, "old")
		storetest.Take(t, s, true, limiter.BudgetCheck{Spec: spec, Key: "new"})
		reset, err := s.ResetBudgetKeys(ctx, spec, func(string) bool { return true })
		slices.Sort(reset)
		if err != nil || !slices.Equal(reset, []string{"new", "old"}) {
			t.Fatalf("reset %v, %v; want new and old", reset, err)
		}
		ok, oh, oz := s.budgetKeys(spec, "old")
		nk, nh, nz := s.budgetKeys(spec, "new")
		if n := exists(t, ok, oh, oz, nk, nh, nz); n != 0 {
			t.Fatalf("%d keys left after the reset", n)
		}
	})

	t.Run("a reload carries its Open breaker", func(t *testing.T) {
		s, _ := newStore(t)
		from := storetest.Spec(minute, limiter.BreakerSpec{Enabled: true, Manual: true})
		to := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 6}}, limiter.BreakerSpec{Enabled: true, Manual: true})
		to.ID = from.ID + "-edited"
		oldLayout{base: base, state: limiter.Open, since: storetest.Epoch, tokens: []time.Duration{0}}.write(t, rc, s, from, "k")
		carried, err := s.CarryBreakers(ctx, from, to)
		if err != nil || !slices.Equal(carried, []string{"k"}) {
			t.Fatalf("carried %v, %v; want k", carried, err)
		}
		b := storetest.Take(t, s, true, limiter.BudgetCheck{Spec: to, Key: "k"})
		if b.Admitted || b.Results[0].Reason != limiter.BreakerIsOpen {
			t.Fatalf("after the carry: %+v, want a denial by the carried breaker", b.Results[0])
		}
		ok, oh, oz := s.budgetKeys(from, "k")
		if n := exists(t, ok, oh, oz); n != 0 {
			t.Fatalf("%d keys of the old ID left after the carry", n)
		}
	})
}

// TestPackedLogsAgreeWithMemoryWhileTheyArePackedAgain drives one key hard
// enough that its packed log is packed again many times (counts outgrow
// their width, the base moves, several charges fall on one instant) and
// wants every result equal to the memory store's.
func TestPackedLogsAgreeWithMemoryWhileTheyArePackedAgain(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	for _, tc := range []struct {
		name    string
		windows []limiter.WindowSpec
		maxStep time.Duration
		maxCost int64
	}{
		{"large costs on long windows", []limiter.WindowSpec{{Length: time.Minute, Limit: 40000}, {Length: time.Hour, Limit: 200000}}, 20 * time.Second, limiter.MaxCost},
		{"small costs on short windows, often at one instant", []limiter.WindowSpec{{Length: time.Second, Limit: 300}, {Length: 10 * time.Second, Limit: 1000}}, 1200 * time.Millisecond, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(storetest.Epoch)
			rs := redisFactory(urlOpts(srv.URL()), nil)(t, clk)
			ms := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk})
			spec := storetest.Spec(tc.windows, limiter.BreakerSpec{})
			rnd := rand.New(rand.NewPCG(1, 2)) // fixed: the same run every time
			for i := 0; i < 2000; i++ {
				if rnd.IntN(3) > 0 { // a third of the charges at the instant of the one before
					clk.Step(time.Duration(rnd.Int64N(int64(tc.maxStep))))
				}
				check := limiter.BudgetCheck{Spec: spec, Key: "k", Cost: 1 + rnd.Int64N(tc.maxCost)}
				m := storetest.Take(t, ms, true, check)
				r := storetest.Take(t, rs, true, check)
				if m.Admitted != r.Admitted || !m.Now.Equal(r.Now) || m.Results[0] != r.Results[0] {
					t.Fatalf("charge %d of %d at +%s:\nmemory %v %+v\nredis  %v %+v", i, check.Cost, clk.Now().Sub(storetest.Epoch), m.Admitted, m.Results[0], r.Admitted, r.Results[0])
				}
			}
		})
	}
}
