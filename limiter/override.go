package limiter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/kubedefender/kubedefender/policy"
)

// Override is an active break-glass grant: matching requests bypass the
// targeted rules until ExpiresAt. It mirrors the Override custom resource.
type Override struct {
	// Name and Namespace of the Override resource.
	Name, Namespace string
	// Budgets and RateLimits name the rules it targets; "*" targets every rule of that kind.
	Budgets    []string
	RateLimits []string
	// Namespaces and Users narrow it; empty means any.
	Namespaces []string
	Users      []string
	ExpiresAt  time.Time
	Reason     string
	// RequestedBy is who asked for it.
	RequestedBy string
	// ResetBreaker closes the targeted breakers and clears their counters once.
	ResetBreaker bool
}

// targets reports whether the override names rule of kind.
func (o *Override) targets(kind RuleKind, rule string) bool {
	names := o.Budgets
	if kind == KindRateLimit {
		names = o.RateLimits
	}
	return slices.Contains(names, rule) || slices.Contains(names, "*")
}

// Covers reports whether the override lets a request bypass rule at now.
func (o *Override) Covers(kind RuleKind, rule string, a *policy.Attributes, now time.Time) bool {
	if !now.Before(o.ExpiresAt) {
		return false
	}
	if !o.targets(kind, rule) {
		return false
	}
	if len(o.Namespaces) > 0 && !slices.Contains(o.Namespaces, a.Namespace) {
		return false
	}
	if len(o.Users) > 0 && !slices.Contains(o.Users, a.User) {
		return false
	}
	return true
}

func coveringOverride(ovs []Override, kind RuleKind, rule string, a *policy.Attributes, now time.Time) *Override {
	for i := range ovs {
		if ovs[i].Covers(kind, rule, a, now) {
			return &ovs[i]
		}
	}
	return nil
}

// SetOverrides replaces the set of overrides (expired ones are harmless and
// ignored). The slice must not be changed afterwards.
func (e *Engine) SetOverrides(ovs []Override) {
	e.overrides.Store(&ovs)
}

// Overrides returns the current overrides.
func (e *Engine) Overrides() []Override { return *e.overrides.Load() }

// ResetBreakers closes the breakers an override targets and clears their
// counters, in the shared store and in the local fallback. The scope narrows
// the reset when it names the budget key exactly (per [namespace] with
// namespaces, per [user] with users); otherwise every key of the budget resets.
func (e *Engine) ResetBreakers(ctx context.Context, o *Override) error {
	st := e.state.Load()
	var errs []error
	for _, r := range st.budgets {
		if !o.targets(KindBudget, r.cb.Name) {
			continue
		}
		for _, key := range resetKeys(r.per, o) {
			if err := e.store.ResetBudget(ctx, r.spec, key); err != nil {
				errs = append(errs, fmt.Errorf("failed to reset budget %s key %s: %w", r.cb.Name, displayKey(key), err))
			}
			// The local fallback keeps this replica's share under its own ID.
			_ = e.fallback.ResetBudget(ctx, r.spec.Share(e.replicas()), key)
			e.metrics.transitions.WithLabelValues(r.cb.Name, "Closed").Inc()
			e.log.Warn("breaker reset by override", "rule", r.cb.Name, "key", displayKey(key), "override", o.Namespace+"/"+o.Name,
				"requestedBy", o.RequestedBy, "reason", o.Reason)
		}
	}
	return errors.Join(errs...)
}

func resetKeys(per []string, o *Override) []string {
	switch {
	case len(per) == 0:
		return []string{""}
	case len(per) == 1 && per[0] == policy.PerNamespace && len(o.Namespaces) > 0:
		keys := make([]string, 0, len(o.Namespaces))
		for _, ns := range o.Namespaces {
			keys = append(keys, policy.PerNamespace+"="+ns)
		}
		return keys
	case len(per) == 1 && per[0] == policy.PerUser && len(o.Users) > 0:
		keys := make([]string, 0, len(o.Users))
		for _, u := range o.Users {
			keys = append(keys, policy.PerUser+"="+u)
		}
		return keys
	}
	return []string{AllKeys}
}
