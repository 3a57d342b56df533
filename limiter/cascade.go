package limiter

import (
	"math"
	"time"

	"github.com/kubedefender/kubedefender/policy"
)

// Blast-radius budgets (cascades: AtRoot). A root request (a namespace,
// workload or node delete, a scale-down, a NoExecute taint) carries in
// Attributes.Removes what it will remove; an AtRoot budget charges it, up
// front, one token per removed object it matches, in the key the object falls
// in, all or nothing with every other check in the one store call. What
// controllers then delete below the root carries Attributes.FollowUp and is
// free for AtRoot budgets. A request with neither is judged as by a
// PerObject budget.

// overridden reports whether an override covers rule r for a (and counts it).
func (e *Engine) overridden(r *budgetRule, a *policy.Attributes, f Front, ovs []Override, now *time.Time, breakersOnly bool, d *Decision) bool {
	if len(ovs) == 0 {
		return false
	}
	if now.IsZero() {
		*now = e.clock.Now()
	}
	o := coveringOverride(ovs, KindBudget, r.cb.Name, a, *now)
	if o == nil {
		return false
	}
	if !breakersOnly {
		r.counter[f][resultOverridden].Inc()
		e.metrics.overridesUsed.WithLabelValues(r.cb.Name).Inc()
	}
	d.Override = o.Name
	return true
}

// cascadeChecks adds the checks of AtRoot budget r for a request that is a
// follow-up (none: it is admitted free, counted as "cascade") or that carries
// Removes: the object the request names, when r matches the request itself,
// costs 1; each Removal r matches as a delete of its resource in its
// namespace by the request's user costs its Count, summed per key.
func (e *Engine) cascadeChecks(sc *scratch, r *budgetRule, a *Attributes, ovs []Override, now *time.Time, breakersOnly bool, d *Decision) {
	if a.FollowUp {
		if r.cb.Applies(&a.Attributes) {
			if !breakersOnly {
				r.counter[a.Front][resultCascade].Inc()
			}
			d.FollowUp = true
		}
		return
	}
	first := len(sc.budget.Checks)
	if r.cb.Applies(&a.Attributes) && !e.overridden(r, &a.Attributes, a.Front, ovs, now, breakersOnly, d) {
		sc.budget.Checks = append(sc.budget.Checks, BudgetCheck{Spec: r.spec, Key: sc.key(r.per, &a.Attributes), Shadow: r.shadow, Cost: 1})
		sc.rules = append(sc.rules, r)
	}
	for i := range a.Removes {
		rm := &a.Removes[i]
		if rm.Count <= 0 {
			continue
		}
		ra := removalAttributes(a, rm)
		if !r.cb.Applies(&ra) || e.overridden(r, &ra, a.Front, ovs, now, breakersOnly, d) {
			continue
		}
		key := sc.key(r.per, &ra)
		merged := false
		for j := first; j < len(sc.budget.Checks); j++ {
			if c := &sc.budget.Checks[j]; c.Key == key {
				c.Cost = addCost(c.Cost, rm.Count)
				sc.arena = sc.arena[:len(sc.arena)-len(key)] // the key is already in the arena
				merged = true
				break
			}
		}
		if !merged {
			sc.budget.Checks = append(sc.budget.Checks, BudgetCheck{Spec: r.spec, Key: key, Shadow: r.shadow, Cost: rm.Count})
			sc.rules = append(sc.rules, r)
		}
	}
}

// removalAttributes is a Removal as the budget matchers see it: a delete of
// its resource in its namespace by the root request's user.
func removalAttributes(a *Attributes, rm *Removal) policy.Attributes {
	return policy.Attributes{
		Verb: "delete", APIGroup: rm.APIGroup, Resource: rm.Resource, Namespace: rm.Namespace,
		User: a.User, Groups: a.Groups, UserAgent: a.UserAgent, DryRun: a.DryRun,
	}
}

// addCost adds without overflowing: a cost that large is denied anyway.
func addCost(x, y int64) int64 {
	if x > math.MaxInt64-y {
		return math.MaxInt64
	}
	return x + y
}
