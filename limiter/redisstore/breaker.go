package redisstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/kubedefender/kubedefender/limiter"
)

// The breaker around Redis and the store's metrics. After FailureThreshold
// consecutive failed calls the breaker opens: calls fail at once with
// ErrStoreUnavailable and one goroutine PINGs Redis (every master of a
// cluster) each ProbeInterval; the first answer closes it. Transitions are
// logged; time spent open is counted.

type redisOp int

const (
	opBudgets redisOp = iota
	opRates
	opReset
	numRedisOps
)

var redisOpNames = [numRedisOps]string{"budgets", "rates", "reset"}

// allow fails fast while the breaker is open.
func (s *RedisStore) allow() error {
	if s.open.Load() {
		return fmt.Errorf("failed to reach redis: %w (breaker open, probing in the background)", limiter.ErrStoreUnavailable)
	}
	return nil
}

// done records the outcome of one call and wraps a failure with
// ErrStoreUnavailable. A call the caller gave up on (its context cancelled)
// does not count against Redis.
func (s *RedisStore) done(ctx context.Context, op redisOp, start time.Time, err error) error {
	s.metrics.latency[op].Observe(s.timers.Since(start).Seconds())
	if err == nil {
		if s.fails.Load() != 0 {
			s.fails.Store(0)
		}
		return nil
	}
	s.metrics.errors[op].Inc()
	if errors.Is(err, limiter.ErrStoreUnavailable) {
		return err
	}
	if !(errors.Is(err, context.Canceled) && ctx.Err() == context.Canceled) {
		if s.fails.Add(1) >= s.threshold {
			s.trip(err)
		}
	}
	return fmt.Errorf("%w: %w", limiter.ErrStoreUnavailable, err)
}

func (s *RedisStore) trip(err error) {
	s.openMu.Lock()
	defer s.openMu.Unlock()
	if s.open.Load() {
		return
	}
	select {
	case <-s.stop:
		return
	default:
	}
	s.openedAt = s.timers.Now()
	s.open.Store(true)
	s.metrics.state.Set(1)
	s.log.Error("redis unreachable; store breaker open, decisions fall back to onStoreFailure",
		"failures", s.fails.Load(), "err", err)
	s.wg.Add(1)
	go s.probeLoop()
}

func (s *RedisStore) probeLoop() {
	defer s.wg.Done()
	t := s.timers.NewTicker(s.probe)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C():
		}
		if err := s.ping(); err != nil {
			s.log.Debug("redis probe failed", "err", err)
			continue
		}
		s.openMu.Lock()
		down := s.timers.Since(s.openedAt)
		s.inFallbk += down
		s.fails.Store(0)
		s.open.Store(false)
		s.metrics.state.Set(0)
		s.openMu.Unlock()
		s.log.Info("redis reachable again; store breaker closed, decisions are shared again", "down", down.Round(time.Millisecond))
		return
	}
}

func (s *RedisStore) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	return s.onEachMaster(ctx, func(ctx context.Context, c redis.Cmdable) error { return c.Ping(ctx).Err() })
}

// fallbackSeconds is the total time the breaker has been open.
func (s *RedisStore) fallbackSeconds() float64 {
	s.openMu.Lock()
	defer s.openMu.Unlock()
	d := s.inFallbk
	if s.open.Load() {
		d += s.timers.Since(s.openedAt)
	}
	return d.Seconds()
}

// redisMetrics are the store's metrics (namespace kubedefender, subsystem store).
type redisMetrics struct {
	latencyVec *prometheus.HistogramVec
	errorsVec  *prometheus.CounterVec
	latency    [numRedisOps]prometheus.Observer
	errors     [numRedisOps]prometheus.Counter
	state      prometheus.Gauge
	fallback   prometheus.CounterFunc
	replicas   prometheus.GaugeFunc
	perCall    prometheus.Histogram
}

func newRedisMetrics(s *RedisStore) *redisMetrics {
	const ns, sub = "kubedefender", "store"
	m := &redisMetrics{
		latencyVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "request_duration_seconds",
			Help:    "Time one call to Redis took, by operation (budgets: one script call judging one or more budget decisions; rates; reset).",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1}}, []string{"op"}),
		errorsVec: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "errors_total",
			Help: "Calls to Redis that failed, by operation (calls refused at once while the store breaker is open are not counted)."}, []string{"op"}),
		perCall: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "budget_decisions_per_call",
			Help:    "Budget decisions judged by one Redis script call: decisions that arrive while every call slot is busy share the next call.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64}}),
		state: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "breaker_state",
			Help: "State of the breaker around Redis: 0 closed (shared decisions), 1 open (onStoreFailure decides)."}),
	}
	m.fallback = prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "fallback_seconds_total",
		Help: "Time spent with the store breaker open, deciding by onStoreFailure."}, s.fallbackSeconds)
	m.replicas = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "replicas",
		Help: "Replicas sharing the store: the configured count, or the live ones seen through heartbeats."},
		func() float64 { return float64(s.Replicas()) })
	for op := redisOp(0); op < numRedisOps; op++ {
		m.latency[op] = m.latencyVec.WithLabelValues(redisOpNames[op])
		m.errors[op] = m.errorsVec.WithLabelValues(redisOpNames[op])
	}
	return m
}

func (m *redisMetrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.latencyVec, m.errorsVec, m.perCall, m.state, m.fallback, m.replicas} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("failed to register store metrics: %w", err)
		}
	}
	return nil
}
