package limiter

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/kubedefender/kubedefender/policy"
)

// Inspector is what a store tells about its keys, for status and the budget
// gauges; part of Store.
type Inspector interface {
	// InspectBudget returns up to limit keys of a budget, the most used first.
	InspectBudget(ctx context.Context, spec *BudgetSpec, limit int) ([]BudgetKeyStatus, error)
	// HottestRates returns up to limit keys of a rate limit, the emptiest bucket first.
	HottestRates(ctx context.Context, spec *RateSpec, limit int) ([]RateKeyStatus, error)
}

// InspectScanCap bounds how many keys one status request reads per rule, so a
// status call stays cheap however many keys a rule has (both stores: the
// memory store judges them under the lock its decisions need).
const InspectScanCap = 2000

// BudgetKeyStatus is what a store knows of one budget key.
type BudgetKeyStatus struct {
	Key   string
	Used  [MaxWindows]int64
	State BreakerState
	Since time.Time
	// FreesAt is when each exhausted window frees up (zero when not exhausted).
	FreesAt [MaxWindows]time.Time
}

// RateKeyStatus is one rate-limit key: how many tokens its bucket holds.
type RateKeyStatus struct {
	Key    string
	Tokens float64
}

// NewRateKeyStatus is the status of a rate key whose theoretical arrival
// time is tat (unix nanoseconds) at now.
func NewRateKeyStatus(spec *RateSpec, key string, tat, now int64) RateKeyStatus {
	used := float64(tat-now) / float64(spec.Interval)
	return RateKeyStatus{Key: key, Tokens: max(0, float64(spec.Burst)-used)}
}

// fullness is the largest used/limit over the windows.
func fullness(spec *BudgetSpec, k *BudgetKeyStatus) float64 {
	f := 0.0
	for j, w := range spec.Windows {
		f = max(f, float64(k.Used[j])/float64(w.Limit))
	}
	if k.State != Closed {
		f += 1
	}
	return f
}

// TopBudgetKeys sorts keys the fullest first (an open breaker first of all)
// and keeps at most limit: what InspectBudget returns.
func TopBudgetKeys(spec *BudgetSpec, keys []BudgetKeyStatus, limit int) []BudgetKeyStatus {
	sort.Slice(keys, func(i, j int) bool {
		fi, fj := fullness(spec, &keys[i]), fullness(spec, &keys[j])
		if fi != fj {
			return fi > fj
		}
		return keys[i].Key < keys[j].Key
	})
	if len(keys) > limit {
		keys = keys[:limit]
	}
	return keys
}

// TopRateKeys sorts keys the emptiest bucket first and keeps at most limit:
// what HottestRates returns.
func TopRateKeys(keys []RateKeyStatus, limit int) []RateKeyStatus {
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Tokens != keys[j].Tokens {
			return keys[i].Tokens < keys[j].Tokens
		}
		return keys[i].Key < keys[j].Key
	})
	if len(keys) > limit {
		keys = keys[:limit]
	}
	return keys
}

// Status is the engine's read-only report: what `kubedefender status` shows.
type Status struct {
	Policy     string           `json:"policy"`
	PolicyHash string           `json:"policyHash"`
	Time       time.Time        `json:"time"`
	Budgets    []BudgetStatus   `json:"budgets"`
	RateLimits []RateStatus     `json:"rateLimits"`
	Overrides  []OverrideStatus `json:"overrides"`
	// Errors lists what could not be read (e.g. the store was unreachable).
	Errors []string `json:"errors,omitempty"`
}

// BudgetStatus is one budget and its busiest keys.
type BudgetStatus struct {
	Name    string      `json:"name"`
	Mode    string      `json:"mode"`
	Per     []string    `json:"per"`
	Breaker string      `json:"breaker"` // "none", "Manual" or "Auto"
	Keys    []KeyStatus `json:"keys"`
}

// KeyStatus is one budget key.
type KeyStatus struct {
	Key          string         `json:"key"`
	Breaker      string         `json:"breaker"`
	BreakerSince *time.Time     `json:"breakerSince,omitempty"`
	Windows      []WindowStatus `json:"windows"`
}

// WindowStatus is one window of a key.
type WindowStatus struct {
	Window  string     `json:"window"`
	Used    int64      `json:"used"`
	Limit   int64      `json:"limit"`
	FreesAt *time.Time `json:"freesAt,omitempty"`
}

// RateStatus is one rate limit and its hottest keys.
type RateStatus struct {
	Name    string          `json:"name"`
	Mode    string          `json:"mode"`
	QPS     float64         `json:"qps"`
	Burst   int64           `json:"burst"`
	Hottest []RateKeyStatus `json:"hottest"`
}

// OverrideStatus is one override the engine holds.
type OverrideStatus struct {
	Name        string    `json:"name"`
	Namespace   string    `json:"namespace"`
	Budgets     []string  `json:"budgets,omitempty"`
	RateLimits  []string  `json:"rateLimits,omitempty"`
	Namespaces  []string  `json:"namespaces,omitempty"`
	Users       []string  `json:"users,omitempty"`
	ExpiresAt   time.Time `json:"expiresAt"`
	Active      bool      `json:"active"`
	RequestedBy string    `json:"requestedBy"`
	Reason      string    `json:"reason"`
}

// Status reports every budget's busiest keys (up to maxKeys each), every rate
// limit's hottest keys, and the overrides. It only reads.
func (e *Engine) Status(ctx context.Context, maxKeys int) *Status {
	st := e.state.Load()
	now := e.clock.Now()
	out := &Status{Policy: st.policy.Policy.Metadata.Name, PolicyHash: st.policy.Hash, Time: now.UTC(),
		Budgets: []BudgetStatus{}, RateLimits: []RateStatus{}, Overrides: []OverrideStatus{}}
	for _, r := range st.budgets {
		bs := BudgetStatus{Name: r.cb.Name, Mode: string(r.cb.Mode), Per: append([]string{}, r.per...), Breaker: "none", Keys: []KeyStatus{}}
		if r.spec.Breaker.Enabled {
			bs.Breaker = "Auto"
			if r.spec.Breaker.Manual {
				bs.Breaker = "Manual"
			}
		}
		keys, err := e.store.InspectBudget(ctx, r.spec, maxKeys)
		if err != nil {
			out.Errors = append(out.Errors, fmt.Sprintf("budget %s: %v", r.cb.Name, err))
		}
		for i := range keys {
			bs.Keys = append(bs.Keys, keyStatus(r.spec, &keys[i]))
		}
		out.Budgets = append(out.Budgets, bs)
	}
	for _, r := range st.rates {
		rs := RateStatus{Name: r.cr.Name, Mode: string(r.cr.Mode), QPS: r.spec.QPS, Burst: r.spec.Burst, Hottest: []RateKeyStatus{}}
		keys, err := e.store.HottestRates(ctx, r.spec, maxKeys)
		if err != nil {
			out.Errors = append(out.Errors, fmt.Sprintf("rate limit %s: %v", r.cr.Name, err))
		}
		rs.Hottest = append(rs.Hottest, keys...)
		out.RateLimits = append(out.RateLimits, rs)
	}
	for _, o := range e.Overrides() {
		out.Overrides = append(out.Overrides, OverrideStatus{Name: o.Name, Namespace: o.Namespace, Budgets: o.Budgets, RateLimits: o.RateLimits,
			Namespaces: o.Namespaces, Users: o.Users, ExpiresAt: o.ExpiresAt.UTC(), Active: now.Before(o.ExpiresAt),
			RequestedBy: o.RequestedBy, Reason: o.Reason})
	}
	return out
}

func keyStatus(spec *BudgetSpec, k *BudgetKeyStatus) KeyStatus {
	ks := KeyStatus{Key: displayKey(k.Key), Breaker: k.State.String()}
	if k.State != Closed {
		since := k.Since.UTC()
		ks.BreakerSince = &since
	}
	for j, w := range spec.Windows {
		ws := WindowStatus{Window: policy.FormatDuration(w.Length), Used: k.Used[j], Limit: w.Limit}
		if !k.FreesAt[j].IsZero() {
			t := k.FreesAt[j].UTC()
			ws.FreesAt = &t
		}
		ks.Windows = append(ks.Windows, ws)
	}
	return ks
}

var _ Inspector = (*MemoryStore)(nil)
