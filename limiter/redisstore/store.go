package redisstore

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"k8s.io/utils/clock"

	"github.com/kubedefender/kubedefender/limiter"
)

// RedisConfig configures a RedisStore. Zero values take the defaults named
// on each field.
type RedisConfig struct {
	// URL is where Redis is; see ParseRedisURL for the forms (single node,
	// Sentinel, Cluster; TLS with rediss). Required unless Options is set.
	URL string
	// Options replace URL when set (programmatic use). The store copies them
	// and sets its own timeouts, retries and TLS on the copy.
	Options *redis.UniversalOptions

	// Username and Password, when set, replace those of the URL (so a
	// password can come from a file or the environment rather than a flag).
	Username, Password string
	// SentinelUsername and SentinelPassword authenticate to the sentinels.
	SentinelUsername, SentinelPassword string

	// TLSCAFile verifies the server with this PEM bundle instead of the
	// system roots. Setting it (or TLSInsecureSkipVerify, or a client
	// certificate) turns TLS on even for a redis:// URL.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are a client certificate (mutual TLS).
	TLSCertFile, TLSKeyFile string
	// TLSServerName overrides the name checked in the server certificate.
	TLSServerName string
	// TLSInsecureSkipVerify skips server certificate verification (testing only).
	TLSInsecureSkipVerify bool

	// KeyPrefix starts every key (default "kd:v1:"). Bump the version to
	// start afresh after an incompatible change of the stored layout. It must
	// not contain '{' or '}' (the hash tags come after it).
	KeyPrefix string
	// Timeout bounds one decision: the whole call to Redis, waiting for a
	// pooled connection, dialling, writing and reading (default 100ms). A
	// decision never waits on Redis longer than this.
	Timeout time.Duration
	// DialTimeout bounds a new connection (default 250ms, and never more than
	// Timeout within a decision).
	DialTimeout time.Duration
	// ReadTimeout and WriteTimeout bound one socket read or write (default Timeout).
	ReadTimeout, WriteTimeout time.Duration
	// MaxKeysPerRule bounds the keys of one rate limit in Redis, as
	// MemoryConfig.MaxKeysPerRule does in memory (default 100000): 32 shards
	// of MaxKeysPerRule/32 keys, new keys of a full shard share its overflow
	// bucket. RateKeyIdle is how long a key is kept after its bucket refilled
	// (default 1m), so clients that keep asking keep their own bucket.
	MaxKeysPerRule int
	RateKeyIdle    time.Duration

	// PoolSize is the most connections per Redis node (default 64, or
	// 10×GOMAXPROCS when larger): one decision holds one connection for one
	// round trip.
	PoolSize int

	// FailureThreshold is how many consecutive failed calls open the breaker
	// around Redis (default 3). While it is open every call fails at once
	// with ErrStoreUnavailable and a background probe PINGs Redis every
	// ProbeInterval (default 500ms); the first answer closes it.
	FailureThreshold int
	ProbeInterval    time.Duration

	// Replicas, when > 0, is the replica count that Replicas returns (a flag),
	// and heartbeats only keep the count of live replicas as a metric.
	Replicas int
	// ReplicaID names this replica in heartbeats (default hostname-random).
	ReplicaID string
	// HeartbeatInterval is how often Run records this replica as alive
	// (default 5s); a replica not seen for 3 intervals is no longer counted.
	HeartbeatInterval time.Duration

	// Clock, when set, is the time every decision is made at: the client
	// sends it to the scripts. nil (production) means Redis TIME, the same
	// clock for every replica. With a Clock, keys live at least 10 minutes so
	// a fake clock that stands still does not see them expire.
	Clock clock.PassiveClock
	// Logger receives store transitions (breaker opened/closed); nil discards.
	Logger *slog.Logger
	// Registerer takes the store metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Hooks are added to the client (tracing, or counting round trips in tests).
	Hooks []redis.Hook
	// AutoPipeline sends the decisions of concurrent callers down shared
	// connections in pipelined batches (go-redis autopipelining, marked
	// experimental there): each decision is still one script call, but Redis
	// and the client make far fewer system calls under concurrency. Faster
	// from a few concurrent callers up, slower for a lone caller; off by default.
	AutoPipeline bool
}

// Defaults of RedisConfig.
const (
	DefaultRedisKeyPrefix    = "kd:v1:"
	DefaultRedisTimeout      = 100 * time.Millisecond
	DefaultRedisDialTimeout  = 250 * time.Millisecond
	DefaultRedisFailures     = 3
	DefaultRedisProbe        = 500 * time.Millisecond
	DefaultRedisHeartbeat    = 5 * time.Second
	redisClockTTLFloor       = 10 * time.Minute
	redisHeartbeatTTLPeriods = 3
)

// RedisStore is the Store shared by every replica through Redis: single
// node, Sentinel or Cluster (Redis 5 or later; tested with 7.0). Every
// decision is one script call, one round trip (redis_lua.go has the key
// layout and the scripts; they are budget.go and rateAllow in Lua), so it
// makes the same decisions as the MemoryStore, at one shared clock: Redis
// TIME.
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
	exec      redis.Scripter // client, or its autopipeliner
	cluster   bool
	scripts   redisScripts
	prefix    string
	hbKey     string
	timeout   time.Duration
	clock     clock.PassiveClock
	ttlFloor  int64 // ms
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
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = defaultReplicaID()
	}
	s := &RedisStore{
		client:        redis.NewUniversalClient(opts),
		scripts:       newRedisScripts(),
		prefix:        cfg.KeyPrefix,
		timeout:       cfg.Timeout,
		clock:         cfg.Clock,
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

// clientOptions validates cfg, fills in defaults and builds the client
// options. Every problem is reported at once.
func (cfg *RedisConfig) clientOptions() (*redis.UniversalOptions, error) {
	var errs []error
	var opts *redis.UniversalOptions
	switch {
	case cfg.Options != nil:
		o := *cfg.Options
		opts = &o
	case cfg.URL != "":
		o, err := ParseRedisURL(cfg.URL)
		if err != nil {
			errs = append(errs, err)
		}
		opts = o
	default:
		errs = append(errs, errors.New("no redis URL"))
	}
	if cfg.KeyPrefix == "" {
		cfg.KeyPrefix = DefaultRedisKeyPrefix
	}
	if strings.ContainsAny(cfg.KeyPrefix, "{}") {
		errs = append(errs, fmt.Errorf("key prefix %q: must not contain '{' or '}'", cfg.KeyPrefix))
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"timeout", &cfg.Timeout, DefaultRedisTimeout},
		{"dial timeout", &cfg.DialTimeout, DefaultRedisDialTimeout},
		{"read timeout", &cfg.ReadTimeout, cfg.Timeout},
		{"write timeout", &cfg.WriteTimeout, cfg.Timeout},
		{"probe interval", &cfg.ProbeInterval, DefaultRedisProbe},
		{"heartbeat interval", &cfg.HeartbeatInterval, DefaultRedisHeartbeat},
	} {
		if *d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %s", d.name, *d.v))
		}
		if *d.v == 0 {
			*d.v = d.def
			if *d.v == 0 { // read/write default to the (defaulted) Timeout
				*d.v = cfg.Timeout
			}
		}
	}
	if cfg.FailureThreshold < 0 || cfg.Replicas < 0 || cfg.PoolSize < 0 || cfg.MaxKeysPerRule < 0 || cfg.RateKeyIdle < 0 {
		errs = append(errs, errors.New("failure threshold, replicas, pool size, max keys per rule and rate key idle must not be negative"))
	}
	if cfg.MaxKeysPerRule == 0 {
		cfg.MaxKeysPerRule = limiter.DefaultMaxKeysPerRule
	}
	if cfg.RateKeyIdle < time.Millisecond {
		cfg.RateKeyIdle = limiter.DefaultRateKeyIdle
	}
	if cfg.FailureThreshold == 0 {
		cfg.FailureThreshold = DefaultRedisFailures
	}
	tlsConf, err := cfg.tlsConfig(opts)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("failed to configure redis store: %w", errors.Join(errs...))
	}
	if cfg.Username != "" {
		opts.Username = cfg.Username
	}
	if cfg.Password != "" {
		opts.Password = cfg.Password
	}
	if cfg.SentinelUsername != "" {
		opts.SentinelUsername = cfg.SentinelUsername
	}
	if cfg.SentinelPassword != "" {
		opts.SentinelPassword = cfg.SentinelPassword
	}
	opts.TLSConfig = tlsConf
	opts.DialTimeout = cfg.DialTimeout
	opts.ReadTimeout = cfg.ReadTimeout
	opts.WriteTimeout = cfg.WriteTimeout
	opts.PoolTimeout = cfg.Timeout
	opts.ContextTimeoutEnabled = true
	opts.MaxRetries = -1 // a retried charge could count twice: fail fast instead
	opts.DialerRetries = 1
	if cfg.PoolSize == 0 {
		cfg.PoolSize = max(64, 10*runtime.GOMAXPROCS(0))
	}
	opts.PoolSize = cfg.PoolSize
	opts.DisableIdentity = true // no CLIENT SETINFO on every new connection
	if opts.ClientName == "" {
		opts.ClientName = "kubedefender"
	}
	return opts, nil
}

func (cfg *RedisConfig) tlsConfig(opts *redis.UniversalOptions) (*tls.Config, error) {
	var base *tls.Config
	if opts != nil && opts.TLSConfig != nil {
		base = opts.TLSConfig.Clone()
	}
	if cfg.TLSCAFile == "" && cfg.TLSCertFile == "" && cfg.TLSKeyFile == "" && !cfg.TLSInsecureSkipVerify && cfg.TLSServerName == "" {
		return base, nil
	}
	if base == nil {
		base = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	base.InsecureSkipVerify = cfg.TLSInsecureSkipVerify //nolint:gosec // explicit opt-in, documented as testing only
	if cfg.TLSServerName != "" {
		base.ServerName = cfg.TLSServerName
	}
	if cfg.TLSCAFile != "" {
		pem, err := os.ReadFile(cfg.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("failed to read redis CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("failed to read redis CA file %s: no PEM certificate in it", cfg.TLSCAFile)
		}
		base.RootCAs = pool
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, errors.New("redis client certificate: set both the certificate and the key file, or neither")
	}
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("failed to load redis client certificate: %w", err)
		}
		base.Certificates = []tls.Certificate{cert}
	}
	return base, nil
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

// rateKeys returns the bucket, index and overflow keys of one rate key:
// <prefix>{r:<rule id>:<shard>}k:<key>, …}i and …}o, the shard (the hash tag)
// being the memory store's (limiter.RateShard).
func (s *RedisStore) rateKeys(spec *limiter.RateSpec, key string) (bucket, index, overflow string) {
	base := s.prefix + "{r:" + spec.ID + ":" + strconv.Itoa(limiter.RateShard(key)) + "}"
	return base + "k:" + key, base + "i", base + "o"
}

// rateKeyName returns the rate key a Redis bucket key holds, "(overflow)" for
// a shard's overflow bucket, "" for anything else.
func rateKeyName(redisKey string) string {
	_, rest, ok := strings.Cut(redisKey, "}")
	switch {
	case !ok:
		return ""
	case strings.HasPrefix(rest, "k:"):
		return rest[2:]
	case rest == "o":
		return "(overflow)"
	}
	return ""
}

// Budgets implements Store: one EVALSHA for the whole batch.
func (s *RedisStore) Budgets(ctx context.Context, b *limiter.BudgetBatch) error {
	b.Results = b.Results[:0]
	b.Admitted = false
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
	a := s.getArgs()
	defer s.putArgs(a)
	a.args = append(a.args, boolArg(b.Commit))
	a.args = s.nowArgs(a.args)
	a.args = append(a.args, s.ttlFloor, b.OnceTTL.Milliseconds())
	a.buf = a.buf[:0]
	for i := range b.Checks {
		c := &b.Checks[i]
		k, h, z := s.budgetKeys(c.Spec, c.Key)
		a.keys = append(a.keys, k, h, z)
		a.buf = appendBudgetCheck(a.buf, c)
	}
	// a string, not a.buf: a call given up on may still be written by the
	// autopipeliner after a.buf went back to the pool
	a.args = append(a.args, string(a.buf))
	if b.Once != "" && b.Commit {
		a.keys = append(a.keys, s.prefix+"{b}:once:"+b.Once)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	res, err := s.scripts.budget.Run(ctx, s.exec, a.keys, a.args...).Int64Slice()
	cancel()
	if err = s.done(ctx, opBudgets, start, err); err != nil {
		return fmt.Errorf("failed to judge budgets: %w", err)
	}
	if err := decodeBudgets(b, res); err != nil {
		return fmt.Errorf("failed to judge budgets: %w: %w", limiter.ErrStoreUnavailable, err)
	}
	return nil
}

func decodeBudgets(b *limiter.BudgetBatch, res []int64) error {
	if len(res) < 3 {
		return fmt.Errorf("script returned %d values", len(res))
	}
	b.Now = time.Unix(res[0], res[1])
	if res[2] == 2 {
		b.Repeat, b.Admitted = true, true
		for range b.Checks {
			b.Results = append(b.Results, limiter.BudgetResult{Allowed: true, Window: -1})
		}
		return nil
	}
	b.Admitted = res[2] == 1
	p := 3
	for i := range b.Checks {
		nw := len(b.Checks[i].Spec.Windows)
		if nw > limiter.MaxWindows {
			return fmt.Errorf("budget %s has %d windows, at most %d fit a result", b.Checks[i].Spec.Name, nw, limiter.MaxWindows)
		}
		if len(res) < p+8+nw {
			return fmt.Errorf("script returned %d values for %d checks", len(res), len(b.Checks))
		}
		r := limiter.BudgetResult{
			Allowed:    res[p] == 1,
			Reason:     limiter.DenyReason(res[p+1]),
			Window:     int(res[p+2]),
			Prev:       limiter.BreakerState(res[p+3]),
			State:      limiter.BreakerState(res[p+4]),
			Since:      time.Unix(res[p+5], res[p+6]),
			RetryAfter: time.Duration(res[p+7]),
		}
		copy(r.Used[:nw], res[p+8:p+8+nw])
		b.Results = append(b.Results, r)
		p += 8 + nw
	}
	return nil
}

// Rates implements Store: one EVALSHA for the batch (single node, Sentinel),
// or one pipeline of one script per check (Cluster).
func (s *RedisStore) Rates(ctx context.Context, b *limiter.RateBatch) error {
	b.Results = b.Results[:0]
	if len(b.Checks) == 0 {
		b.Now = s.now()
		return nil
	}
	for i := range b.Checks {
		if err := b.Checks[i].Spec.Check(); err != nil {
			return fmt.Errorf("failed to judge rate limits: %w", err)
		}
	}
	if err := s.allow(); err != nil {
		return err
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var err error
	if s.cluster && len(b.Checks) > 1 {
		err = s.ratesPipelined(ctx, b)
	} else {
		err = s.ratesScript(ctx, b)
	}
	if err = s.done(ctx, opRates, start, err); err != nil {
		b.Results = b.Results[:0]
		return fmt.Errorf("failed to judge rate limits: %w", err)
	}
	return nil
}

func (s *RedisStore) rateArgs(a *redisArgs, checks []limiter.RateCheck) {
	a.args = s.nowArgs(a.args)
	a.args = append(a.args, s.ttlFloor, s.rateIdle, s.perShard)
	for i := range checks {
		c := &checks[i]
		bucket, index, overflow := s.rateKeys(c.Spec, c.Key)
		a.keys = append(a.keys, bucket, index, overflow)
		iv := c.Spec.Interval
		a.args = append(a.args, boolArg(c.Shadow), int64(iv/time.Second), int64(iv%time.Second), c.Spec.Burst)
	}
}

func (s *RedisStore) ratesScript(ctx context.Context, b *limiter.RateBatch) error {
	a := s.getArgs()
	defer s.putArgs(a)
	s.rateArgs(a, b.Checks)
	res, err := s.scripts.rate.Run(ctx, s.exec, a.keys, a.args...).Int64Slice()
	if err != nil {
		return err
	}
	if len(res) != 2+4*len(b.Checks) {
		return fmt.Errorf("%w: rate script returned %d values for %d checks", limiter.ErrStoreUnavailable, len(res), len(b.Checks))
	}
	b.Now = time.Unix(res[0], res[1])
	for i := range b.Checks {
		b.Results = append(b.Results, s.rateResult(res[2+4*i:6+4*i]))
	}
	return nil
}

// rateResult reads one check's status, retryS, retryNs, overflowed.
func (s *RedisStore) rateResult(r []int64) limiter.RateResult {
	if r[3] == 1 {
		s.overflowed.Add(1)
	}
	return limiter.RateResult{Allowed: r[0] == 1, Skipped: r[0] == 2, RetryAfter: time.Duration(r[1])*time.Second + time.Duration(r[2])}
}

// Overflowed counts rate checks judged on a shard's overflow bucket because
// the shard was full (as MemoryStats.Overflowed).
func (s *RedisStore) Overflowed() int64 { return s.overflowed.Load() }

// ratesPipelined sends one script per check in one pipeline: on a cluster
// the checks' keys are in different slots. Checks after the first non-shadow
// denial are reported skipped although they were charged.
func (s *RedisStore) ratesPipelined(ctx context.Context, b *limiter.RateBatch) error {
	cmds := make([]*redis.Cmd, len(b.Checks))
	args := make([]*redisArgs, len(b.Checks))
	for i := range b.Checks {
		args[i] = s.getArgs()
		s.rateArgs(args[i], b.Checks[i:i+1])
	}
	defer func() {
		for _, a := range args {
			s.putArgs(a)
		}
	}()
	run := func(eval bool, only []bool) error {
		pipe := s.client.Pipeline()
		for i := range b.Checks {
			if only != nil && !only[i] {
				continue
			}
			if eval {
				cmds[i] = s.scripts.rate.Eval(ctx, pipe, args[i].keys, args[i].args...)
			} else {
				cmds[i] = s.scripts.rate.EvalSha(ctx, pipe, args[i].keys, args[i].args...)
			}
		}
		_, err := pipe.Exec(ctx)
		return err
	}
	err := run(false, nil)
	if err != nil {
		// Scripts missing on a node (NOSCRIPT) did not run: load them by EVAL.
		var retry []bool
		for i, c := range cmds {
			if c.Err() != nil && redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				if retry == nil {
					retry = make([]bool, len(cmds))
				}
				retry[i] = true
			}
		}
		if retry == nil {
			return err
		}
		if err := run(true, retry); err != nil {
			return err
		}
	}
	denied := false
	for i, c := range cmds {
		res, err := c.Int64Slice()
		if err != nil {
			return err
		}
		if len(res) != 6 {
			return fmt.Errorf("%w: rate script returned %d values", limiter.ErrStoreUnavailable, len(res))
		}
		if i == 0 {
			b.Now = time.Unix(res[0], res[1])
		}
		r := s.rateResult(res[2:6])
		if denied {
			r = limiter.RateResult{Skipped: true}
		} else if !r.Allowed && !b.Checks[i].Shadow {
			denied = true
		}
		b.Results = append(b.Results, r)
	}
	return nil
}

// ResetBudget implements Store: it deletes the key's breaker and log, or
// with AllKeys every key of the rule (SCAN of the one node that holds the
// {b} slot; a break-glass operation, not a hot path).
func (s *RedisStore) ResetBudget(ctx context.Context, spec *limiter.BudgetSpec, key string) error {
	if err := s.allow(); err != nil {
		return err
	}
	start := time.Now()
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
	node := redis.Cmdable(s.client)
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		m, err := cc.MasterForKey(cctx, s.prefix+"{b}")
		cancel()
		if err != nil {
			return err
		}
		node = m
	}
	pattern := globEscape(s.prefix+"{b}:"+spec.ID+":") + "*"
	var cursor uint64
	for {
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		keys, next, err := node.Scan(cctx, cursor, pattern, 1000).Result()
		if err == nil && len(keys) > 0 {
			err = node.Del(cctx, keys...).Err()
		}
		cancel()
		if err != nil {
			return err
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
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
	return time.Now()
}

// Replicas returns how many replicas share the store: RedisConfig.Replicas
// when set, else the live replicas counted by heartbeats (at least 1; 1
// before the first heartbeat). Pass it as EngineConfig.Replicas.
func (s *RedisStore) Replicas() int {
	if s.replicasFixed > 0 {
		return s.replicasFixed
	}
	return int(max(1, s.replicas.Load()))
}

// Run loads the scripts and heartbeats this replica until ctx is done. Call
// it once, in its own goroutine; decisions work without it (scripts load on
// first use) but Replicas then stays at 1.
func (s *RedisStore) Run(ctx context.Context) {
	s.loadScripts(ctx)
	t := time.NewTicker(s.heartbeat)
	defer t.Stop()
	for {
		s.beat(ctx)
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

func (s *RedisStore) loadScripts(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*s.timeout)
	defer cancel()
	load := func(ctx context.Context, c redis.Scripter) error {
		for _, sc := range []*redis.Script{s.scripts.budget, s.scripts.rate, s.scripts.heartbeat} {
			if err := sc.Load(ctx, c).Err(); err != nil {
				return err
			}
		}
		return nil
	}
	var err error
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return load(ctx, c) })
	} else {
		err = load(ctx, s.client)
	}
	if err != nil {
		s.log.Debug("failed to preload redis scripts; they load on first use", "err", err)
	}
}

// beat records this replica and refreshes the count of live replicas.
func (s *RedisStore) beat(ctx context.Context) {
	if s.open.Load() {
		return // keep the last count through an outage
	}
	ttl := redisHeartbeatTTLPeriods * s.heartbeat
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	n, err := s.scripts.heartbeat.Run(ctx, s.client, []string{s.hbKey}, s.replicaID, ttl.Milliseconds()).Int64()
	if err != nil {
		s.log.Debug("failed to record replica heartbeat", "err", err)
		return
	}
	if old := s.replicas.Swap(n); old != n {
		s.log.Info("replicas sharing the redis store", "replicas", n, "was", old)
	}
}

// Close stops the background probe and the heartbeats, removes this
// replica from the live set (best effort) and closes the client. Decisions
// after Close fail.
func (s *RedisStore) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.openMu.Lock() // trip starts probes under openMu: none starts after this
		close(s.stop)
		s.openMu.Unlock()
		s.wg.Wait()
		if !s.open.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			_ = s.client.ZRem(ctx, s.hbKey, s.replicaID).Err()
			cancel()
		}
		if e := s.client.Close(); e != nil {
			err = fmt.Errorf("failed to close redis client: %w", e)
		}
	})
	return err
}

// CarryBreakers implements breakerCarrier: it SCANs the old ID's keys on the
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

// ResetBudgetKeys implements keyResetter: a SCAN of the rule's keys on the
// node holding the {b} slot, and a DEL of those that match. A break-glass
// operation, not a hot path.
func (s *RedisStore) ResetBudgetKeys(ctx context.Context, spec *limiter.BudgetSpec, match func(string) bool) ([]string, error) {
	if err := s.allow(); err != nil {
		return nil, err
	}
	start := time.Now()
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
