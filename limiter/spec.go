package limiter

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"time"

	"github.com/kubedefender/kubedefender/policy"
)

// WindowSpec is one sliding window: at most Limit admissions in any span of
// length Length.
type WindowSpec struct {
	Length time.Duration
	Limit  int64
}

// BreakerSpec configures a budget's breaker.
type BreakerSpec struct {
	Enabled       bool
	Manual        bool
	Cooldown      time.Duration
	HalfOpenLimit int64
}

// BudgetSpec is the part of a budget that stores need. Immutable.
type BudgetSpec struct {
	Name string
	// ID identifies the counters: the name and a hash of the windows. Rules
	// whose name and windows are unchanged keep their counters across reloads;
	// a change of windows starts afresh instead of misreading old data.
	ID      string
	Windows []WindowSpec
	Breaker BreakerSpec
}

// Longest returns the longest window, which bounds how long state is kept.
func (s *BudgetSpec) Longest() WindowSpec { return s.Windows[len(s.Windows)-1] }

// RateSpec is the part of a rate limit that stores need. Immutable.
type RateSpec struct {
	Name  string
	ID    string
	QPS   float64
	Burst int64
	// Interval is the time one token takes to refill (1/QPS).
	Interval time.Duration
}

// NewBudgetSpec builds the store spec of a validated budget.
func NewBudgetSpec(b *policy.Budget) *BudgetSpec {
	s := &BudgetSpec{Name: b.Name}
	h := sha256.New()
	var buf [16]byte
	for _, w := range b.Windows {
		s.Windows = append(s.Windows, WindowSpec{Length: w.Window.Duration, Limit: w.Limit})
		binary.BigEndian.PutUint64(buf[:8], uint64(w.Window.Duration))
		binary.BigEndian.PutUint64(buf[8:], uint64(w.Limit))
		h.Write(buf[:])
	}
	s.ID = b.Name + "@" + hex.EncodeToString(h.Sum(nil)[:4])
	if br := b.Breaker; br != nil {
		s.Breaker = BreakerSpec{
			Enabled:       true,
			Manual:        br.Recovery == policy.RecoveryManual,
			Cooldown:      br.Cooldown.Duration,
			HalfOpenLimit: br.HalfOpenLimit,
		}
	}
	return s
}

// NewRateSpec builds the store spec of a validated rate limit.
func NewRateSpec(r *policy.RateLimit) *RateSpec {
	s := &RateSpec{Name: r.Name, QPS: r.QPS, Burst: r.Burst}
	s.Interval = interval(r.QPS)
	h := sha256.New()
	var buf [16]byte
	binary.BigEndian.PutUint64(buf[:8], math.Float64bits(r.QPS))
	binary.BigEndian.PutUint64(buf[8:], uint64(r.Burst))
	h.Write(buf[:])
	s.ID = r.Name + "@" + hex.EncodeToString(h.Sum(nil)[:4])
	return s
}

// Share returns a copy of s scaled to one of n replicas: each limit divided by
// n, rounded down but at least 1. It is what a replica enforces alone when the
// shared store is down (onStoreFailure: Local).
func (s *BudgetSpec) Share(n int) *BudgetSpec {
	if n <= 1 {
		return s
	}
	c := *s
	c.ID = s.ID + "/local"
	c.Windows = make([]WindowSpec, len(s.Windows))
	for i, w := range s.Windows {
		c.Windows[i] = WindowSpec{Length: w.Length, Limit: max(1, w.Limit/int64(n))}
	}
	if c.Breaker.HalfOpenLimit > 0 {
		c.Breaker.HalfOpenLimit = max(1, c.Breaker.HalfOpenLimit/int64(n))
	}
	return &c
}

// Share returns a copy of s scaled to one of n replicas.
func (s *RateSpec) Share(n int) *RateSpec {
	if n <= 1 {
		return s
	}
	c := *s
	c.ID = s.ID + "/local"
	c.QPS = s.QPS / float64(n)
	c.Burst = max(1, s.Burst/int64(n))
	c.Interval = interval(c.QPS)
	return &c
}

// interval is the refill time of one token at qps, at least 1ns. A qps too
// small for a Duration gives -1 (Check refuses it): converting an
// out-of-range float to an integer is undefined in Go.
func interval(qps float64) time.Duration {
	iv := float64(time.Second) / qps
	if !(iv < math.MaxInt64) { // also NaN
		return -1
	}
	return time.Duration(max(1, iv))
}

// Check reports whether the stores can run s without indexing past
// MaxWindows or overflowing a time computation. Validation guarantees it for
// every policy (policy/bounds.go); stores check again so a spec built any
// other way fails with an error instead of a panic or a wrong answer.
func (s *BudgetSpec) Check() error {
	if n := len(s.Windows); n == 0 || n > MaxWindows {
		return fmt.Errorf("budget %s has %d windows, want 1 to %d", s.Name, n, MaxWindows)
	}
	for j, w := range s.Windows {
		if w.Length <= 0 || w.Length > policy.MaxWindow || w.Limit <= 0 {
			return fmt.Errorf("budget %s window %d (%s, limit %d): want a length in (0, %s] and a limit above 0",
				s.Name, j, w.Length, w.Limit, policy.FormatDuration(policy.MaxWindow))
		}
	}
	if br := s.Breaker; br.Enabled && !br.Manual && (br.Cooldown <= 0 || br.Cooldown > policy.MaxCooldown) {
		return fmt.Errorf("budget %s cooldown %s: want (0, %s]", s.Name, br.Cooldown, policy.FormatDuration(policy.MaxCooldown))
	}
	return nil
}

// maxBucketSpan bounds burst×interval so GCRA arithmetic on unix nanoseconds
// cannot overflow.
const maxBucketSpan = int64(1) << 61

// Check reports whether the stores can run s without overflowing: a refill
// interval of at least 1ns and burst×interval within maxBucketSpan.
func (s *RateSpec) Check() error {
	if s.Interval < 1 || s.Burst < 1 || s.Burst > maxBucketSpan/int64(s.Interval) {
		return fmt.Errorf("rate limit %s (interval %s, burst %d): want an interval of at least 1ns and burst×interval within %s",
			s.Name, s.Interval, s.Burst, time.Duration(maxBucketSpan))
	}
	return nil
}

// checkBounds reports whether s is within the bounds validation sets
// (policy/bounds.go), which also keep the Redis store's arithmetic exact.
func (s *RateSpec) checkBounds() error {
	if !(s.QPS >= policy.MinQPS && s.QPS <= policy.MaxQPS) || s.Burst < 1 || s.Burst > policy.MaxBurst {
		return fmt.Errorf("rate limit %s (qps %v, burst %d): want qps in [%v, %v] and burst in [1, %d]",
			s.Name, s.QPS, s.Burst, policy.MinQPS, float64(policy.MaxQPS), policy.MaxBurst)
	}
	return s.Check()
}
