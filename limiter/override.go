package limiter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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
// counters, in the shared store and in the local fallback. The override's
// scope narrows the reset to the keys it covers: with namespaces, only keys of
// those namespaces; with users, only keys of those users — for any budget key
// (per [namespace], [user], [namespace, user] in either order). A dimension
// the scope does not name matches every value; a budget keyed on neither of
// the scoped dimensions resets every key.
func (e *Engine) ResetBreakers(ctx context.Context, o *Override) error {
	st := e.state.Load()
	var errs []error
	by := o.Namespace + "/" + o.Name
	for _, r := range st.budgets {
		if !o.targets(KindBudget, r.cb.Name) {
			continue
		}
		keys, match := resetPlan(r.per, o)
		if match != nil {
			n, err := e.resetMatching(ctx, r, match)
			if err != nil {
				errs = append(errs, fmt.Errorf("failed to reset budget %s keys %s: %w", r.cb.Name, scopeString(o), err))
			}
			e.metrics.transitions.WithLabelValues(r.cb.Name, "Closed").Inc()
			e.log.Warn("breakers reset by override", "rule", r.cb.Name, "scope", scopeString(o), "keys", n, "override", by,
				"requestedBy", o.RequestedBy, "reason", o.Reason)
			continue
		}
		for _, key := range keys {
			if err := e.store.ResetBudget(ctx, r.spec, key); err != nil {
				errs = append(errs, fmt.Errorf("failed to reset budget %s key %s: %w", r.cb.Name, displayKey(key), err))
			}
			// The local fallback keeps this replica's share under its own ID.
			_ = e.fallback.ResetBudget(ctx, r.spec.Share(e.replicas()), key)
			e.metrics.transitions.WithLabelValues(r.cb.Name, "Closed").Inc()
			e.log.Warn("breaker reset by override", "rule", r.cb.Name, "key", displayKey(key), "override", by,
				"requestedBy", o.RequestedBy, "reason", o.Reason)
		}
	}
	return errors.Join(errs...)
}

// resetMatching resets the keys of r that match, in the shared store and the
// local fallback, and returns how many the shared store reset.
func (e *Engine) resetMatching(ctx context.Context, r *budgetRule, match func(string) bool) (int, error) {
	n := 0
	var err error
	for i, s := range []Store{e.store, e.fallback} {
		spec := r.spec
		if i == 1 {
			spec = r.spec.Share(e.replicas())
		}
		keys, ferr := s.ResetBudgetKeys(ctx, spec, match)
		if i == 0 {
			n, err = len(keys), ferr
		}
	}
	return n, err
}

// resetPlan says which keys of a budget keyed per an override resets: exact
// keys when the scope names every dimension of the key (or the budget is
// cluster-wide), otherwise a predicate over keys (nil keys), or AllKeys when
// the scope names none of them.
func resetPlan(per []string, o *Override) (keys []string, match func(string) bool) {
	if len(per) == 0 {
		return []string{""}, nil
	}
	values := func(dim string) []string {
		switch dim {
		case policy.PerNamespace:
			return o.Namespaces
		case policy.PerUser:
			return o.Users
		}
		return nil
	}
	named := 0
	for _, d := range per {
		if len(values(d)) > 0 {
			named++
		}
	}
	switch named {
	case 0:
		return []string{AllKeys}, nil
	case len(per):
		keys = []string{""}
		for i, d := range per {
			var next []string
			for _, k := range keys {
				for _, v := range values(d) {
					if i > 0 {
						next = append(next, k+","+d+"="+v)
					} else {
						next = append(next, d+"="+v)
					}
				}
			}
			keys = next
		}
		return keys, nil
	}
	return nil, func(key string) bool {
		got, ok := parseBudgetKey(per, key)
		if !ok {
			return false
		}
		for i, d := range per {
			if vs := values(d); len(vs) > 0 && !slices.Contains(vs, got[i]) {
				return false
			}
		}
		return true
	}
}

// parseBudgetKey splits a budget key ("namespace=prod,user=alice") into its
// values, one per dimension of per (namespace and user). A namespace never
// holds a comma; a user name may hold anything, so it is what is left.
func parseBudgetKey(per []string, key string) ([]string, bool) {
	out := make([]string, len(per))
	rest := key
	for i, d := range per {
		p := d + "="
		if i > 0 {
			p = "," + p
		}
		if !strings.HasPrefix(rest, p) {
			return nil, false
		}
		rest = rest[len(p):]
		if i == len(per)-1 {
			out[i] = rest
			break
		}
		var end int
		if d == policy.PerNamespace {
			end = strings.IndexByte(rest, ',')
		} else {
			// a user followed by the remaining dimensions: they hold no commas
			// (namespace), so the user ends at the last comma that starts them
			end = strings.LastIndex(rest, ","+per[i+1]+"=")
		}
		if end < 0 {
			return nil, false
		}
		out[i], rest = rest[:end], rest[end:]
	}
	return out, true
}

func scopeString(o *Override) string {
	var parts []string
	if len(o.Namespaces) > 0 {
		parts = append(parts, "namespaces="+strings.Join(o.Namespaces, ","))
	}
	if len(o.Users) > 0 {
		parts = append(parts, "users="+strings.Join(o.Users, ","))
	}
	return strings.Join(parts, " ")
}
