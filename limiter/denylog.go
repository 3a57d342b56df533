package limiter

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Denial logs that scale. A LIST storm against a rate limit, or a controller
// retrying deletes against an open breaker, is thousands of denials a
// second; one log line each would make the guard's log the next outage.
// So the first denial of a (rule, key) in an interval is logged in full, as
// one line; later ones are only counted; when the interval ends one summary
// line per (rule, key) says how many more were denied. At most
// denialLogKeys pairs are tracked per interval: denials of further pairs are
// counted together and summarised in one line. Intervals are measured on
// the engine's clock; Run writes the summaries of an interval that ended
// (the next denial would too).

const (
	// denialLogInterval is how long the first denial of a (rule, key)
	// stands for the later ones.
	denialLogInterval = 10 * time.Second
	// denialLogKeys bounds the (rule, key) pairs tracked per interval.
	denialLogKeys = 4096
)

type denialKey struct {
	kind RuleKind
	rule string
	key  string
}

// denialLog decides which denials are logged in full and writes the
// summaries of the others. Safe for concurrent use.
type denialLog struct {
	clock    clock.PassiveClock
	log      *slog.Logger
	interval time.Duration
	maxKeys  int

	mu    sync.Mutex
	start time.Time // of the current interval; zero: none yet
	more  map[denialKey]int64
	// untracked counts denials of pairs past maxKeys in this interval.
	untracked int64
}

func newDenialLog(c clock.PassiveClock, log *slog.Logger, interval time.Duration, maxKeys int) *denialLog {
	return &denialLog{clock: c, log: log, interval: interval, maxKeys: maxKeys, more: map[denialKey]int64{}}
}

// first records a denial of key by rule and reports whether it is the first
// of its pair in the current interval: the caller logs it in full. rule and
// key must not change afterwards (Decision strings do not).
func (l *denialLog) first(kind RuleKind, rule, key string) bool {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.start.IsZero() || now.Sub(l.start) >= l.interval {
		l.flushLocked()
		l.start = now
	}
	k := denialKey{kind, rule, key}
	if n, ok := l.more[k]; ok {
		l.more[k] = n + 1
		return false
	}
	if len(l.more) >= l.maxKeys {
		l.untracked++
		return false
	}
	l.more[k] = 0
	return true
}

// flushDue writes the summaries of an interval that has ended.
func (l *denialLog) flushDue() {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.start.IsZero() && now.Sub(l.start) >= l.interval {
		l.flushLocked()
		l.start = time.Time{}
	}
}

// flush writes the summaries of the current interval and starts afresh.
func (l *denialLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
	l.start = time.Time{}
}

func (l *denialLog) flushLocked() {
	for k, n := range l.more {
		if n == 0 {
			continue
		}
		level, msg := slog.LevelWarn, "more requests denied"
		if k.kind == KindRateLimit {
			level, msg = slog.LevelInfo, "more requests rate-limited"
		}
		l.log.Log(context.Background(), level, msg, "kind", k.kind.String(), "rule", k.rule, "key", displayKey(k.key),
			"more", n, "interval", l.interval)
	}
	if l.untracked > 0 {
		l.log.Warn("more requests denied on keys past the log's bound", "denied", l.untracked, "trackedKeys", l.maxKeys,
			"interval", l.interval)
	}
	clear(l.more)
	l.untracked = 0
}

// run writes the summaries of each interval that ends until ctx is
// done, and those pending then. The timer only wakes it: which interval
// ended is judged on the engine's clock.
func (l *denialLog) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.flush()
			return
		case <-t.C:
			l.flushDue()
		}
	}
}
