package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"k8s.io/utils/clock"

	"github.com/kubedefender/kubedefender/limiter"
)

// RedisStore is the Store shared by every replica through Redis: single
// node, Sentinel or Cluster (Redis 5 or later; tested with 7.0). Every
// decision is at most one script call, one round trip (budgetlua.go has
// the layout of budget keys and the budget script, lua.go the others; they
// are budget.go and rateAllow in Lua), so it makes the same decisions as the
// MemoryStore, at one shared clock: Redis TIME. Under load budget decisions
// share script calls (coalesce.go).
//
// Hash tags. Every budget key of every rule lives under the one hash tag
// {b}, so a request's whole budget batch (any number of rules) is one script
// in one slot, judged all or nothing. Budgets guard deletions, which are few,
// so one slot (one master of a cluster) carries them. Rate limits carry much
// more traffic, so a rule's keys are spread over 32 tags {r:<rule>:<shard>}
// (the shards of its key bound, MaxKeysPerRule) and load spreads over the
// masters. A rate batch is one script on a single node or
// Sentinel; on a cluster it is one pipeline (one round trip, one script per
// check, each on its own master), and there a check after a denial is still
// charged (it is reported skipped): that can only deny more, never admit
// more.
//
// Failure. Every call runs under Timeout, without retries (a retried charge
// could count twice). After FailureThreshold consecutive failures a breaker
// opens: calls fail at once with ErrStoreUnavailable, so the engine follows
// each rule's onStoreFailure without waiting, while a probe PINGs Redis in
// the background and closes the breaker when it answers.
//
// Replicas. Run heartbeats this replica into a sorted set under
// <prefix>{hb}:replicas (score = Redis time) every HeartbeatInterval and
// counts those seen within 3 intervals; Replicas returns that count (at least
// 1), or RedisConfig.Replicas when set. The count is kept through an outage,
// so each replica's Local share stays what it was when Redis went away.
type RedisStore struct {
	client    redis.UniversalClient
	exec      redis.Scripter // the rate calls' client, or its autopipeliner (budget calls use client)
	cluster   bool
	scripts   redisScripts
	prefix    string
	hbKey     string
	timeout   time.Duration
	clock     clock.PassiveClock
	timers    clock.WithTicker // TimerClock, or real time
	ttlFloor  int64            // ms
	log       *slog.Logger
	metrics   *redisMetrics
	threshold int32
	probe     time.Duration
	perShard  int   // rate keys per shard of a rule
	rateIdle  int64 // ms

	replicasFixed int
	replicaID     string
	heartbeat     time.Duration
	replicas      atomic.Int64

	overflowed atomic.Int64

	fails    atomic.Int32
	open     atomic.Bool
	openMu   sync.Mutex
	openedAt time.Time
	inFallbk time.Duration

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	argPool   sync.Pool
	coal      budgetCoalescer
}

var _ limiter.Store = (*RedisStore)(nil)

// NewRedisStore builds a store from cfg. It does not connect: the first
// decision (or Run) does, so a replica starts even while Redis is down.
func NewRedisStore(cfg RedisConfig) (*RedisStore, error) {
	opts, err := cfg.clientOptions()
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.TimerClock == nil {
		cfg.TimerClock = clock.RealClock{}
	}
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = defaultReplicaID()
	}
	s := &RedisStore{
		client:        redis.NewUniversalClient(opts),
		scripts:       newRedisScripts(),
		prefix:        cfg.KeyPrefix,
		timeout:       cfg.Timeout,
		clock:         cfg.Clock,
		timers:        cfg.TimerClock,
		log:           cfg.Logger,
		threshold:     int32(cfg.FailureThreshold),
		probe:         cfg.ProbeInterval,
		replicasFixed: cfg.Replicas,
		replicaID:     cfg.ReplicaID,
		heartbeat:     cfg.HeartbeatInterval,
		stop:          make(chan struct{}),
		perShard:      max(1, cfg.MaxKeysPerRule/limiter.RateShards),
		rateIdle:      cfg.RateKeyIdle.Milliseconds(),
	}
	s.hbKey = s.prefix + "{hb}:replicas"
	s.exec = s.client
	if cfg.AutoPipeline {
		ap, err := s.client.AutoPipeline()
		if err != nil {
			_ = s.client.Close()
			return nil, fmt.Errorf("failed to configure redis store: autopipelining: %w", err)
		}
		s.exec = ap
	}
	_, s.cluster = s.client.(*redis.ClusterClient)
	if cfg.Clock != nil {
		s.ttlFloor = redisClockTTLFloor.Milliseconds()
	}
	s.replicas.Store(1)
	s.argPool.New = func() any { return &redisArgs{} }
	for _, h := range cfg.Hooks {
		s.client.AddHook(h)
	}
	s.metrics = newRedisMetrics(s)
	if cfg.Registerer != nil {
		if err := s.metrics.register(cfg.Registerer); err != nil {
			_ = s.client.Close()
			return nil, err
		}
	}
	return s, nil
}

func defaultReplicaID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// redisArgs is the scratch of one call: keys and arguments, reused.
type redisArgs struct {
	keys []string
	args []any
	buf  []byte
}

func (s *RedisStore) getArgs() *redisArgs {
	a := s.argPool.Get().(*redisArgs)
	a.keys, a.args = a.keys[:0], a.args[:0]
	return a
}

func (s *RedisStore) putArgs(a *redisArgs) {
	clear(a.args) // drop references to strings of past calls
	s.argPool.Put(a)
}

// nowArgs appends the time arguments: "" (Redis TIME) or the clock's time.
func (s *RedisStore) nowArgs(args []any) []any {
	if s.clock == nil {
		return append(args, "", 0)
	}
	t := s.clock.Now()
	return append(args, t.Unix(), t.Nanosecond())
}

func boolArg(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Budgets implements Store: one EVALSHA for the whole batch, or a share of
// one under load (coalesce.go).
func (s *RedisStore) Budgets(ctx context.Context, b *limiter.BudgetBatch) error {
	b.Results = b.Results[:0]
	b.Admitted, b.Repeat = false, false
	if len(b.Checks) == 0 {
		b.Admitted, b.Now = true, s.now()
		return nil
	}
	for i := range b.Checks {
		if err := b.Checks[i].Spec.Check(); err != nil {
			return fmt.Errorf("failed to judge budgets: %w", err)
		}
	}
	if err := s.allow(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	c := s.getCall()
	s.encode(c, b)
	return s.judge(ctx, c)
}

// ResetBudget implements Store: it deletes the key's breaker and log, or
// with AllKeys every key of the rule (SCAN of the one node that holds the
// {b} slot; a break-glass operation, not a hot path).
func (s *RedisStore) ResetBudget(ctx context.Context, spec *limiter.BudgetSpec, key string) error {
	if err := s.allow(); err != nil {
		return err
	}
	start := s.timers.Now()
	var err error
	if key == limiter.AllKeys {
		err = s.resetAll(ctx, spec)
	} else {
		k, h, z := s.budgetKeys(spec, key)
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		err = s.client.Del(cctx, k, h, z).Err()
		cancel()
	}
	if err = s.done(ctx, opReset, start, err); err != nil {
		return fmt.Errorf("failed to reset budget %s: %w", spec.Name, err)
	}
	return nil
}

func (s *RedisStore) resetAll(ctx context.Context, spec *limiter.BudgetSpec) error {
	node, err := s.budgetNode(ctx)
	if err != nil {
		return err
	}
	return scanEach(ctx, node, globEscape(s.budgetBase(spec))+"*", s.timeout, func(keys []string) error {
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		defer cancel()
		return node.Del(cctx, keys...).Err()
	})
}

// globEscape quotes the glob characters of SCAN MATCH.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (s *RedisStore) now() time.Time {
	if s.clock != nil {
		return s.clock.Now()
	}
	return s.timers.Now()
}

// CarryBreakers implements limiter.Store: it SCANs the old ID's keys on the
// node holding the {b} slot and carries them in one script call per batch.
// A reload, never a request path.
func (s *RedisStore) CarryBreakers(ctx context.Context, from, to *limiter.BudgetSpec) ([]string, error) {
	if from.ID == to.ID {
		return nil, nil
	}
	if err := s.allow(); err != nil {
		return nil, err
	}
	node, err := s.budgetNode(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to carry breakers of %s: %w", to.Name, err)
	}
	var carried []string
	seen := map[string]bool{}
	err = scanBudgetKeys(ctx, node, s.budgetBase(from), s.timeout, func(names []string) error {
		keys := make([]string, 0, 5*len(names))
		for _, key := range names {
			ok, oh, oz := s.budgetKeys(from, key)
			nk, nh, _ := s.budgetKeys(to, key)
			keys = append(keys, ok, oh, oz, nk, nh)
		}
		args := s.nowArgs(nil)
		args = append(args, boolArg(from.Breaker.Manual), int64(from.Breaker.Cooldown), boolArg(to.Breaker.Manual), int64(to.Breaker.Cooldown), s.ttlFloor)
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		defer cancel()
		res, err := s.scripts.carry.Run(cctx, s.client, keys, args...).Int64Slice()
		if err != nil {
			return err
		}
		for _, i := range res {
			if i >= 1 && int(i) <= len(names) && !seen[names[i-1]] {
				seen[names[i-1]] = true
				carried = append(carried, names[i-1])
			}
		}
		return nil
	})
	if err != nil {
		return carried, fmt.Errorf("failed to carry breakers of %s: %w", to.Name, err)
	}
	return carried, nil
}

// Retain implements limiter.Store and does nothing: every Redis key expires
// by its own TTL (the longest window, the breaker's cooldown, the rate
// bucket's idle time), so the keys of a rule a reload removed go on their own
// and nothing is held in this process per rule.
func (s *RedisStore) Retain(map[string]bool, map[string]*limiter.BudgetSpec) {}

// scanEach calls fn with every batch of keys matching pattern on node, each
// SCAN call under timeout.
func scanEach(ctx context.Context, node redis.Cmdable, pattern string, timeout time.Duration, fn func([]string) error) error {
	var cursor uint64
	for {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		keys, next, err := node.Scan(cctx, cursor, pattern, 1000).Result()
		cancel()
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			if err := fn(keys); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// ResetBudgetKeys implements limiter.Store: a SCAN of the rule's keys on the
// node holding the {b} slot, and a DEL of those that match. A break-glass
// operation, not a hot path.
func (s *RedisStore) ResetBudgetKeys(ctx context.Context, spec *limiter.BudgetSpec, match func(string) bool) ([]string, error) {
	if err := s.allow(); err != nil {
		return nil, err
	}
	start := s.timers.Now()
	node, err := s.budgetNode(ctx)
	var reset []string
	if err == nil {
		seen := map[string]bool{}
		err = scanBudgetKeys(ctx, node, s.budgetBase(spec), s.timeout, func(names []string) error {
			var del []string
			for _, key := range names {
				if match(key) {
					k, h, z := s.budgetKeys(spec, key)
					del = append(del, k, h, z)
					if !seen[key] {
						seen[key] = true
						reset = append(reset, key)
					}
				}
			}
			if len(del) == 0 {
				return nil
			}
			cctx, cancel := context.WithTimeout(ctx, s.timeout)
			defer cancel()
			return node.Del(cctx, del...).Err()
		})
	}
	if err = s.done(ctx, opReset, start, err); err != nil {
		return reset, fmt.Errorf("failed to reset budget %s: %w", spec.Name, err)
	}
	return reset, nil
}
