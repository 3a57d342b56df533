package limiter

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
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
	s.Interval = time.Duration(math.Max(1, float64(time.Second)/r.QPS))
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
	c.Interval = time.Duration(math.Max(1, float64(time.Second)/c.QPS))
	return &c
}
