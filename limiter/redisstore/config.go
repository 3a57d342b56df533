package redisstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"k8s.io/utils/clock"

	"github.com/kubedefender/kubedefender/limiter"
)

// The configuration of a RedisStore: what can be set, its defaults, and how
// it becomes go-redis client options (timeouts, retries, TLS).

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
	// TimerClock drives the store's own timers and measurements: the probes
	// of the breaker around Redis and how long it stays open, heartbeats,
	// and call latency. nil is real time. Unlike Clock it never changes the
	// time a decision is judged at.
	TimerClock clock.WithTicker
	// Logger receives store transitions (breaker opened/closed); nil discards.
	Logger *slog.Logger
	// Registerer takes the store metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Hooks are added to the client (tracing, or counting round trips in tests).
	Hooks []redis.Hook
	// AutoPipeline sends the rate decisions of concurrent callers down
	// shared connections in pipelined batches (go-redis autopipelining,
	// marked experimental there): each decision is still one script call,
	// but Redis and the client make far fewer system calls under
	// concurrency. Faster from a few concurrent callers up, slower for a lone
	// caller; off by default. Budget decisions do not use it: the store
	// coalesces them itself (coalesce.go), and a second layer of batching
	// only slowed them (BenchmarkRedisStore).
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
