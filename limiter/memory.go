package limiter

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"
)

// MemoryConfig configures a MemoryStore.
type MemoryConfig struct {
	// Clock drives windows and breakers; nil is the real clock.
	Clock clock.PassiveClock
	// MaxKeysPerRule bounds the keys one rule keeps (default 100000). When a
	// rule is full, requests with new keys share one overflow key: memory stays
	// bounded and a flood of distinct keys is limited together, never freed.
	// A rate limit's keys are split into 32 shards by a hash of the key, each
	// bounded by MaxKeysPerRule/32 with its own overflow key, as in Redis.
	MaxKeysPerRule int
	// RateKeyIdle is how long a rate-limit key is kept after its bucket
	// refilled (default 1m, whole milliseconds): a client that keeps asking
	// keeps its own bucket, so a flood of new keys (user agents are chosen by
	// the client) fills the overflow key, never the buckets of clients that
	// were already there.
	RateKeyIdle time.Duration
	// SweepInterval is how often Run forgets idle keys (default 30s).
	SweepInterval time.Duration
}

// DefaultMaxKeysPerRule is the default bound on keys per rule.
const DefaultMaxKeysPerRule = 100000

// DefaultRateKeyIdle is how long a refilled rate-limit key is kept by default.
const DefaultRateKeyIdle = time.Minute

// MemoryStore is the in-process Store for one replica. Budgets are judged under
// one lock (all-or-nothing across rules); rate limits use sharded locks.
type MemoryStore struct {
	clock    clock.PassiveClock
	maxKeys  int
	rateIdle int64 // ns, whole milliseconds
	sweep    time.Duration
	overflow atomic.Int64

	mu      sync.Mutex
	budgets map[string]*budgetTable
	once    map[string]int64 // charge-once keys: expiry, unix nanos

	rmu   sync.RWMutex
	rates map[string]*rateTable
}

var _ Store = (*MemoryStore)(nil)

type budgetTable struct {
	spec     *BudgetSpec
	keys     map[string]*budgetState
	overflow budgetState
}

// RateShards is how many shards a rate limit's keys are split into, by
// RateShard, in both stores.
const RateShards = 32

// RateShard is the shard of a rate key: fnv32(key) mod RateShards. The Redis
// store puts it in the key's hash tag.
func RateShard(key string) int { return int(fnv32(key) % RateShards) }

type rateTable struct {
	spec   *RateSpec
	shards [RateShards]rateShard
}

type rateShard struct {
	mu sync.Mutex
	// tat holds each key's theoretical arrival time. Values are pointers: an
	// update writes through the pointer, because assigning to an existing map
	// key replaces the stored key with the (pooled, reused) lookup string.
	tat      map[string]*int64
	overflow int64
	// nextIdle is the earliest time a key of the shard may become idle
	// (tat+RateKeyIdle), so a full shard is pruned only when something can go.
	nextIdle int64
	_        [32]byte // keep shards on their own cache lines
}

// NewMemoryStore returns an empty store.
func NewMemoryStore(cfg MemoryConfig) *MemoryStore {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.MaxKeysPerRule <= 0 {
		cfg.MaxKeysPerRule = DefaultMaxKeysPerRule
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = 30 * time.Second
	}
	if cfg.RateKeyIdle <= 0 {
		cfg.RateKeyIdle = DefaultRateKeyIdle
	}
	return &MemoryStore{
		clock:    cfg.Clock,
		maxKeys:  cfg.MaxKeysPerRule,
		rateIdle: int64(cfg.RateKeyIdle.Truncate(time.Millisecond)),
		sweep:    cfg.SweepInterval,
		budgets:  map[string]*budgetTable{},
		once:     map[string]int64{},
		rates:    map[string]*rateTable{},
	}
}

// budgetKey returns the state of key, creating it when there is room and
// falling back to the rule's overflow key when there is not. Caller holds s.mu.
func (s *MemoryStore) budgetKey(spec *BudgetSpec, key string) *budgetState {
	t := s.budgets[spec.ID]
	if t == nil {
		t = &budgetTable{spec: spec, keys: map[string]*budgetState{}}
		s.budgets[spec.ID] = t
	}
	// The same ID after a reload may come with another breaker: Sweep judges
	// idleness with the spec decisions use now.
	t.spec = spec
	if st := t.keys[key]; st != nil {
		return st
	}
	if len(t.keys) >= s.maxKeys {
		s.overflow.Add(1)
		return &t.overflow
	}
	st := &budgetState{}
	t.keys[strings.Clone(key)] = st
	return st
}

// Budgets implements Store.
func (s *MemoryStore) Budgets(_ context.Context, b *BudgetBatch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now().UnixNano()
	b.Repeat = false
	if b.Commit && b.Once != "" {
		if exp, ok := s.once[b.Once]; ok && now < exp {
			b.Results = b.Results[:0]
			for range b.Checks {
				b.Results = append(b.Results, BudgetResult{Allowed: true, Window: -1})
			}
			b.Admitted, b.Repeat, b.Now = true, true, time.Unix(0, now)
			return nil
		}
	}
	for i := range b.Checks {
		if err := b.Checks[i].Spec.Check(); err != nil {
			return fmt.Errorf("failed to judge budgets: %w", err)
		}
	}
	var states [16]*budgetState
	sts := states[:0]
	for i := range b.Checks {
		st := s.budgetKey(b.Checks[i].Spec, b.Checks[i].Key)
		sts = append(sts, st)
		now = max(now, st.clampNow(now))
	}
	b.Results = b.Results[:0]
	b.Admitted = true
	for i := range b.Checks {
		res := sts[i].judge(b.Checks[i].Spec, now, b.Checks[i].Tokens())
		if !res.Allowed && !b.Checks[i].Shadow {
			b.Admitted = false
		}
		b.Results = append(b.Results, res)
	}
	b.Now = time.Unix(0, now)
	if !b.Commit {
		return nil
	}
	for i := range b.Checks {
		sts[i].apply(b.Checks[i].Spec, now, &b.Results[i], b.Admitted, b.Checks[i].Tokens())
	}
	if b.Admitted && b.Once != "" {
		if len(s.once) >= s.maxKeys {
			s.sweepOnce(now)
		}
		if len(s.once) < s.maxKeys { // still full: the repeat will be charged, memory stays bounded
			s.once[strings.Clone(b.Once)] = now + int64(b.OnceTTL)
		}
	}
	return nil
}

// sweepOnce forgets expired charge-once keys. Caller holds s.mu.
func (s *MemoryStore) sweepOnce(now int64) {
	for k, exp := range s.once {
		if exp <= now {
			delete(s.once, k)
		}
	}
}

func (s *MemoryStore) rateTable(spec *RateSpec) *rateTable {
	s.rmu.RLock()
	t := s.rates[spec.ID]
	s.rmu.RUnlock()
	if t != nil {
		return t
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if t = s.rates[spec.ID]; t == nil {
		t = &rateTable{spec: spec}
		for i := range t.shards {
			t.shards[i].tat = map[string]*int64{}
		}
		s.rates[spec.ID] = t
	}
	return t
}

// fnv32 hashes a key to a shard without allocating.
func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// Rates implements Store.
func (s *MemoryStore) Rates(_ context.Context, b *RateBatch) error {
	now := s.clock.Now().UnixNano()
	b.Now = time.Unix(0, now)
	b.Results = b.Results[:0]
	denied := false
	perShard := s.maxKeys / RateShards
	for i := range b.Checks {
		c := &b.Checks[i]
		if denied {
			b.Results = append(b.Results, RateResult{Skipped: true})
			continue
		}
		if err := c.Spec.Check(); err != nil {
			b.Results = b.Results[:0]
			return fmt.Errorf("failed to judge rate limits: %w", err)
		}
		t := s.rateTable(c.Spec)
		sh := &t.shards[fnv32(c.Key)%RateShards]
		sh.mu.Lock()
		p := sh.tat[c.Key]
		if p == nil && len(sh.tat) >= max(1, perShard) {
			s.pruneRates(sh, now)
		}
		overflow := p == nil && len(sh.tat) >= max(1, perShard)
		var tat int64
		switch {
		case overflow:
			tat = sh.overflow
			s.overflow.Add(1)
		case p != nil:
			tat = *p
		}
		newTat, allowed, retry := rateAllow(c.Spec, tat, now)
		switch {
		case overflow:
			sh.overflow = newTat
		case p != nil:
			*p = newTat
		default:
			v := new(int64) // not &newTat, which would move newTat to the heap on every call
			*v = newTat
			sh.tat[strings.Clone(c.Key)] = v
			if len(sh.tat) == 1 || newTat+s.rateIdle < sh.nextIdle {
				sh.nextIdle = newTat + s.rateIdle
			}
		}
		sh.mu.Unlock()
		b.Results = append(b.Results, RateResult{Allowed: allowed, RetryAfter: retry})
		if !allowed && !c.Shadow {
			denied = true
		}
	}
	return nil
}

// ResetBudget implements Store.
func (s *MemoryStore) ResetBudget(_ context.Context, spec *BudgetSpec, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.budgets[spec.ID]
	if t == nil {
		return nil
	}
	if key == AllKeys {
		delete(s.budgets, spec.ID)
		return nil
	}
	delete(t.keys, key)
	return nil
}

// Retain implements Store: it forgets the state of every rule whose ID is not
// listed (rules removed or changed by a reload) and hands the kept budget
// tables the specs of the new policy (by ID), so Sweep judges with the
// breaker the policy has now.
func (s *MemoryStore) Retain(ids map[string]bool, specs map[string]*BudgetSpec) {
	s.mu.Lock()
	for id, t := range s.budgets {
		if !ids[id] {
			delete(s.budgets, id)
			continue
		}
		if sp := specs[id]; sp != nil {
			t.spec = sp
		}
	}
	s.mu.Unlock()
	s.rmu.Lock()
	for id := range s.rates {
		if !ids[id] {
			delete(s.rates, id)
		}
	}
	s.rmu.Unlock()
}

// Sweep forgets idle keys: budgets with nothing in their longest window and a
// closed breaker, rate buckets that have refilled.
func (s *MemoryStore) Sweep() {
	now := s.clock.Now().UnixNano()
	s.mu.Lock()
	s.sweepOnce(now)
	for _, t := range s.budgets {
		for k, st := range t.keys {
			st.log.dropThrough(now - int64(t.spec.Longest().Length))
			if st.idle(t.spec, now) {
				delete(t.keys, k)
			}
		}
	}
	s.mu.Unlock()
	s.rmu.RLock()
	tables := make([]*rateTable, 0, len(s.rates))
	for _, t := range s.rates {
		tables = append(tables, t)
	}
	s.rmu.RUnlock()
	for _, t := range tables {
		for i := range t.shards {
			sh := &t.shards[i]
			sh.mu.Lock()
			s.pruneRates(sh, now)
			sh.mu.Unlock()
		}
	}
}

// Run sweeps idle keys until ctx is done.
func (s *MemoryStore) Run(ctx context.Context) {
	t := time.NewTicker(s.sweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Sweep()
		}
	}
}

// InspectBudget implements Inspector.
func (s *MemoryStore) InspectBudget(_ context.Context, spec *BudgetSpec, limit int) ([]BudgetKeyStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := spec.Check(); err != nil {
		return nil, fmt.Errorf("failed to inspect budget: %w", err)
	}
	t := s.budgets[spec.ID]
	if t == nil {
		return nil, nil
	}
	now := s.clock.Now().UnixNano()
	out := make([]BudgetKeyStatus, 0, min(InspectScanCap, len(t.keys)))
	for k, st := range t.keys {
		// Status holds the lock decisions need: judge a bounded sample (map
		// order), as the Redis store does with its SCAN cap.
		if len(out) >= InspectScanCap {
			break
		}
		res := st.judge(spec, now, 1)
		state, since, _ := st.effective(spec, now)
		ks := BudgetKeyStatus{Key: k, Used: res.Used, State: state, Since: time.Unix(0, since)}
		for j, w := range spec.Windows {
			if res.Used[j] >= w.Limit {
				ks.FreesAt[j] = time.Unix(0, st.log.at(st.log.n-int(w.Limit))+int64(w.Length))
			}
		}
		out = append(out, ks)
	}
	return TopBudgetKeys(spec, out, limit), nil
}

// HottestRates implements Inspector.
func (s *MemoryStore) HottestRates(_ context.Context, spec *RateSpec, limit int) ([]RateKeyStatus, error) {
	s.rmu.RLock()
	t := s.rates[spec.ID]
	s.rmu.RUnlock()
	if t == nil {
		return nil, nil
	}
	now := s.clock.Now().UnixNano()
	var out []RateKeyStatus
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, tat := range sh.tat {
			if *tat > now {
				out = append(out, NewRateKeyStatus(spec, k, *tat, now))
			}
		}
		sh.mu.Unlock()
	}
	return TopRateKeys(out, limit), nil
}

// CarryBreakers implements Store.
func (s *MemoryStore) CarryBreakers(_ context.Context, from, to *BudgetSpec) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.budgets[from.ID]
	if old == nil || from.ID == to.ID {
		return nil, nil
	}
	now := s.clock.Now().UnixNano()
	var carried []string
	table := func() *budgetTable {
		t := s.budgets[to.ID]
		if t == nil {
			t = &budgetTable{spec: to, keys: map[string]*budgetState{}}
			s.budgets[to.ID] = t
		}
		return t
	}
	for k, st := range old.keys {
		state, since, _ := st.effective(from, now)
		if state != Open {
			continue
		}
		t := table()
		if t.keys[k] != nil {
			continue
		}
		t.keys[k] = &budgetState{state: Open, since: since}
		carried = append(carried, k)
	}
	if state, since, _ := old.overflow.effective(from, now); state == Open {
		t := table()
		t.overflow = budgetState{state: Open, since: since}
	}
	return carried, nil
}

// pruneRates forgets the shard's idle keys: those whose bucket refilled more
// than RateKeyIdle ago (in whole milliseconds, as the Redis store counts).
// It scans only when nextIdle says a key can go. Caller holds sh.mu.
func (s *MemoryStore) pruneRates(sh *rateShard, now int64) {
	nowMs := now / int64(time.Millisecond)
	if nowMs < sh.nextIdle/int64(time.Millisecond) || len(sh.tat) == 0 {
		return
	}
	next := int64(math.MaxInt64)
	for k, tat := range sh.tat {
		if idle := *tat + s.rateIdle; idle/int64(time.Millisecond) <= nowMs {
			delete(sh.tat, k)
		} else {
			next = min(next, idle)
		}
	}
	sh.nextIdle = next
}

// ResetBudgetKeys implements Store.
func (s *MemoryStore) ResetBudgetKeys(_ context.Context, spec *BudgetSpec, match func(string) bool) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.budgets[spec.ID]
	if t == nil {
		return nil, nil
	}
	var reset []string
	for k := range t.keys {
		if match(k) {
			delete(t.keys, k)
			reset = append(reset, k)
		}
	}
	return reset, nil
}
