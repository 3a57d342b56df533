package policy

import (
	"fmt"
	"time"
)

// Bounds of the numbers a policy may hold. Every policy that validates runs:
// the limiter's stores index at most MaxWindows windows, and these ranges keep
// every interval and overflow computation of both stores exact (int64
// nanoseconds in memory; in Redis, Lua doubles exact below 2^53 nanoseconds,
// about 104 days, with a budget key's log rebased every 46 days).
const (
	// MaxWindows is the most windows a budget may have (limiter.MaxWindows).
	MaxWindows = 8
	// MaxWindow is the longest a budget window may be.
	MaxWindow = 50 * 24 * time.Hour
	// MaxCooldown is the longest an Auto breaker's cooldown may be.
	MaxCooldown = 50 * 24 * time.Hour
	// MinQPS and MaxQPS bound a rate limit's qps: one token every 1000s at
	// the least, a million a second at the most.
	MinQPS = 0.001
	MaxQPS = 1e6
	// MaxBurst bounds a rate limit's burst (at least 1).
	MaxBurst = 1000000
)

// atMost is the message of a duration over its bound, in days.
func atMost(bound time.Duration) string {
	return fmt.Sprintf("must be at most %dd", bound/(24*time.Hour))
}
