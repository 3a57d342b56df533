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
	// Rules are the budget and rate-limit names it targets; "*" targets all.
	Rules []string
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

// Covers reports whether the override lets a request bypass rule at now.
func (o *Override) Covers(rule string, a *policy.Attributes, now time.Time) bool {
	if !now.Before(o.ExpiresAt) {
		return false
	}
	if !slices.Contains(o.Rules, rule) && !slices.Contains(o.Rules, "*") {
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

func coveringOverride(ovs []Override, rule string, a *policy.Attributes, now time.Time) *Override {
	for i := range ovs {
		if ovs[i].Covers(rule, a, now) {
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
		if !slices.Contains(o.Rules, r.cb.Name) && !slices.Contains(o.Rules, "*") {
			continue
		}
		for _, key := range resetKeys(r.per, o) {
			for _, s := range []Store{e.store, e.fallback} {
				if err := s.ResetBudget(ctx, r.spec, key); err != nil {
					errs = append(errs, fmt.Errorf("failed to reset budget %s key %s: %w", r.cb.Name, displayKey(key), err))
				}
				if err := s.ResetBudget(ctx, r.spec.Share(e.replicas()), key); err != nil && s == e.fallback {
					errs = append(errs, err)
				}
			}
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
