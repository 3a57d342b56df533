package limiter

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubedefender/kubedefender/policy"
)

// The guard must never become the outage through its own bug. Decide
// recovers a panic from anywhere in a decision (matching, keys, the store,
// the answer) and re-decides the request rule by rule in decideDegraded:
// every rule the request matches then follows its onStoreFailure, as when the
// shared store is unreachable — Allow admits, Deny denies with 503, Local
// judges the rule alone on this replica's fallback store. The panic is counted
// per rule in kubedefender_limiter_decision_panics_total and logged once per
// policy hash, with its stack. A rule whose spec the stores cannot run (a
// policy that skipped validation: nine windows, qps 1e-11) is never handed to
// a store: it follows onStoreFailure the same way, and a reload logs it.
// The fronts' own recover (the webhook's 500) stays as the last resort.

// guardMetrics counts decisions the engine could not make normally.
type guardMetrics struct {
	panics *prometheus.CounterVec
}

func newGuardMetrics() *guardMetrics {
	return &guardMetrics{panics: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kubedefender", Subsystem: "limiter", Name: "decision_panics_total",
		Help: "Rule checks decided by the rule's onStoreFailure because the engine failed on them: a panic while deciding, or a rule the stores cannot run. Any increase is a bug; the log has the policy hash and the stack.",
	}, []string{"kind", "rule"})}
}

func (m *guardMetrics) register(r prometheus.Registerer) error {
	if err := r.Register(m.panics); err != nil {
		return fmt.Errorf("failed to register limiter metrics: %w", err)
	}
	return nil
}

// forgetRemoved drops the series of rules a reload removed.
func (m *guardMetrics) forgetRemoved(old, cur *policy.Compiled) {
	for _, name := range removedRules(old, cur) {
		m.panics.DeletePartialMatch(prometheus.Labels{"rule": name})
	}
}

// notePanic logs a recovered panic, once per policy hash.
func (e *Engine) notePanic(st *engineState, a *Attributes, p any) {
	hash := st.policy.Hash
	if old := e.panicHash.Load(); old != nil && *old == hash {
		return
	}
	e.panicHash.Store(&hash)
	e.log.Error("decision panicked; the rules it matched follow their onStoreFailure (logged once per policy)",
		"policyHash", hash, "front", a.Front.String(), "verb", a.Verb, "resource", a.Resource,
		"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
}

// decideDegraded decides a request rule by rule, each under its own recover.
// With p set (a panic interrupted Decide) every rule the request matches
// follows its onStoreFailure: what was charged before the panic stays charged.
// With p nil (the policy holds rules the stores cannot run) those rules
// follow onStoreFailure and the others are judged one by one, each all or
// nothing on its own.
func (e *Engine) decideDegraded(ctx context.Context, st *engineState, a *Attributes, p any) Decision {
	if p != nil {
		e.notePanic(st, a, p)
	}
	checks := a.Checks
	if checks == 0 {
		checks = CheckBudgets | CheckRateLimits
	}
	d := Decision{Allowed: true}
	ovs := *e.overrides.Load()
	now := e.clock.Now()
	keyOf := func(per []string) string { return strings.Clone((&scratch{}).key(per, &a.Attributes)) }
	if checks&CheckRateLimits != 0 {
		for _, r := range st.rates {
			if passesOver(ovs, KindRateLimit, &r.cr.Rule, r.cr.Name, a, now, &d) {
				continue
			}
			rd, final := e.degradedRule(st, a, r.degraded(p == nil), func(s Store, local bool, sc *scratch, od *Decision) {
				one := &engineState{policy: st.policy, rates: []*rateRule{r.onStore(local, e.replicas)}}
				e.decideRates(ctx, &job{store: s, st: one, a: a, sc: sc}, od)
			}, keyOf, &d)
			if final {
				return rd
			}
		}
	}
	if checks&(CheckBudgets|CheckBreakers) == 0 {
		return d
	}
	commit := checks&CheckBudgets != 0 && !a.DryRun
	breakersOnly := checks&CheckBudgets == 0
	for _, r := range st.budgets {
		// An AtRoot budget on a root or follow-up matches through Removes
		// too, and its overrides apply per removal (in decideBudgets).
		var rovs []Override
		if r.atRoot && (a.FollowUp || len(a.Removes) > 0) {
			if a.FollowUp || !safeCascadeApplies(r, a) {
				continue // a follow-up is free for AtRoot budgets
			}
			rovs = ovs
		} else if passesOver(ovs, KindBudget, &r.cb.Rule, r.cb.Name, a, now, &d) {
			continue
		}
		rd, final := e.degradedRule(st, a, r.degraded(p == nil), func(s Store, local bool, sc *scratch, od *Decision) {
			one := &engineState{policy: st.policy, budgets: []*budgetRule{r.onStore(local, e.replicas)}}
			e.decideBudgets(ctx, &job{store: s, st: one, a: a, sc: sc, ovs: rovs, commit: commit, breakersOnly: breakersOnly}, od)
		}, keyOf, &d)
		if final {
			return rd
		}
	}
	return d
}

// passesOver says decideDegraded skips a rule: it does not apply to a, or
// an override in force covers it (named in d).
func passesOver(ovs []Override, kind RuleKind, rule *policy.Rule, name string, a *Attributes, now time.Time, d *Decision) bool {
	if !safeApplies(rule, &a.Attributes) {
		return true
	}
	if o := coveringOverride(ovs, kind, name, &a.Attributes, now); o != nil {
		d.Override = o.Name
		return true
	}
	return false
}

// degraded describes one rule on the degraded path.
type degraded struct {
	kind   RuleKind
	name   string
	per    []string
	onFail policy.StoreFailurePolicy
	shadow bool
	// runnable: the stores can run the rule's spec.
	runnable bool
	// tryStore: ask the shared store first (no panic interrupted Decide).
	tryStore bool
}

// degraded describes r for degradedRule.
func (r *budgetRule) degraded(tryStore bool) degraded {
	return degraded{kind: KindBudget, name: r.cb.Name, per: r.per, onFail: r.onFail, shadow: r.shadow, runnable: r.err == nil, tryStore: tryStore}
}

// degraded describes r for degradedRule.
func (r *rateRule) degraded(tryStore bool) degraded {
	return degraded{kind: KindRateLimit, name: r.cr.Name, per: r.per, onFail: r.onFail, shadow: r.shadow, runnable: r.err == nil, tryStore: tryStore}
}

// onStore is r as degradedRule judges it: as it is on the shared store; on
// the fallback store (local) with this replica's share of its limit, and
// admitted should that store fail too.
func (r *budgetRule) onStore(local bool, replicas func() int) *budgetRule {
	if !local {
		return r
	}
	l := *r
	l.spec, l.onFail = r.spec.Share(replicas()), policy.StoreFailureAllow
	return &l
}

// onStore: see budgetRule.onStore.
func (r *rateRule) onStore(local bool, replicas func() int) *rateRule {
	if !local {
		return r
	}
	l := *r
	l.spec, l.onFail = r.spec.Share(replicas()), policy.StoreFailureAllow
	return &l
}

// degradedRule judges one rule of decideDegraded: on the shared store when
// it may (a denial is the answer, warnings go into d), else as its
// onStoreFailure says (counted as a panic fallback): Deny answers an engine
// failure unless the rule is in Shadow, Local judges the rule's share on the
// fallback store, Allow admits. decide judges the rule alone on a store, with
// the rule's local share when local is true, under decideOne's recover (a
// panic is a failed ask). final says the returned decision is the answer.
func (e *Engine) degradedRule(st *engineState, a *Attributes, r degraded, decide func(s Store, local bool, sc *scratch, d *Decision), keyOf func([]string) string, d *Decision) (_ Decision, final bool) {
	run := func(s Store, local bool) (Decision, bool) {
		return e.decideOne(st, a, func(sc *scratch, od *Decision) { decide(s, local, sc, od) })
	}
	if r.tryStore && r.runnable {
		if rd, ok := run(e.store, false); ok {
			if !rd.Allowed {
				return rd, true
			}
			d.Warnings = append(d.Warnings, rd.Warnings...)
			return Decision{}, false
		}
	}
	e.guard.panics.WithLabelValues(r.kind.String(), r.name).Inc()
	d.Fallback = true
	switch {
	case r.onFail == policy.StoreFailureDeny && !r.shadow:
		return engineFailureDecision(r.kind, r.name, keyOf(r.per)), true
	case r.onFail == policy.StoreFailureLocal && r.runnable:
		if rd, ok := run(e.fallback, true); ok && !rd.Allowed {
			rd.Fallback = true
			return rd, true
		}
	}
	return Decision{}, false
}

// decideOne runs one single-rule decision under recover; ok is false when it
// panicked (logged once per policy, as a panic of Decide).
func (e *Engine) decideOne(st *engineState, a *Attributes, run func(sc *scratch, d *Decision)) (d Decision, ok bool) {
	defer func() {
		if p := recover(); p != nil {
			e.notePanic(st, a, p)
			d, ok = Decision{}, false
		}
	}()
	sc := &scratch{}
	d = Decision{Allowed: true}
	run(sc, &d)
	return d, true
}

// safeApplies is Rule.Applies; a rule whose matching panics applies (its
// onStoreFailure then decides).
func safeApplies(r *policy.Rule, a *policy.Attributes) (applies bool) {
	defer func() {
		if recover() != nil {
			applies = true
		}
	}()
	return r.Applies(a)
}

// safeCascadeApplies reports whether AtRoot budget r counts anything of root
// request a: a itself or one of its removals; a rule whose matching panics
// applies.
func safeCascadeApplies(r *budgetRule, a *Attributes) bool {
	if safeApplies(&r.cb.Rule, &a.Attributes) {
		return true
	}
	for i := range a.Removes {
		if ra := removalAttributes(a, &a.Removes[i]); a.Removes[i].Count > 0 && safeApplies(&r.cb.Rule, &ra) {
			return true
		}
	}
	return false
}

// engineFailureDecision denies for a rule the engine failed on, whose
// onStoreFailure is Deny.
func engineFailureDecision(kind RuleKind, rule, key string) Decision {
	d := Decision{
		Allowed: false, Err: ErrEngineFailure, Kind: kind, Rule: rule, Key: key, RetryAfter: time.Second, Fallback: true,
		Message: fmt.Sprintf("kubedefender: %s %q (key %s) cannot be checked: the guard failed on this rule (an internal error, logged and counted in kubedefender_limiter_decision_panics_total) and the rule says onStoreFailure: Deny; retry shortly",
			kind, rule, displayKey(key)),
	}
	d.Code, d.Reason = denialStatus(d.Err, false)
	return d
}
