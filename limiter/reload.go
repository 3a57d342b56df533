package limiter

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/kubedefender/kubedefender/policy"
)

// A reload has two phases, as apiserver's queue sets do with
// BeginConfigChange and Complete: PreparePolicy builds the new rules to the
// side (specs, the checks the stores need, metric children) without
// changing what runs, and its commit swaps them in and cannot fail. The
// policy watcher prepares every subscriber and commits only when all of them
// prepared, so a policy one of them refuses changes nothing anywhere.

// PreparePolicy builds the engine's state for p without changing what runs
// and returns the commit that swaps it in. Counters of rules whose name and
// windows are unchanged carry over (their store IDs are the same). A rule
// whose windows change starts its counts afresh, but its Open breakers carry
// over to the new windows (only an override closes a Manual breaker); the
// line the commit logs names them. A rule the stores cannot run (only a
// policy that skipped validation has one) is no error: the commit logs it and
// it follows its onStoreFailure.
//
// Commit must be called at most once, and before the next PreparePolicy
// (the watcher serialises reloads); a prepared policy that is never committed
// leaves no trace. The commit cannot fail: a store that cannot carry
// breakers over is logged.
func (e *Engine) PreparePolicy(p *policy.Compiled) (commit func(), err error) {
	if p == nil {
		return nil, errors.New("failed to prepare limiter policy: no policy")
	}
	st := &engineState{policy: p}
	keep := map[string]bool{}
	for i := range p.Budgets {
		cb := &p.Budgets[i]
		r := &budgetRule{cb: cb, spec: NewBudgetSpec(cb.Budget), per: cb.Per, shadow: cb.Mode == policy.ModeShadow, onFail: cb.OnStoreFailure,
			atRoot: cb.Cascades == policy.CascadesAtRoot}
		r.counter = e.metrics.ruleCounters(KindBudget, cb.Name)
		for _, w := range cb.Windows {
			r.near = append(r.near, &lazyCounter{vec: e.metrics.nearLimit, labels: []string{cb.Name, policy.FormatDuration(w.Window.Duration)}})
		}
		r.err = r.spec.Check()
		st.broken = st.broken || r.err != nil
		st.budgets = append(st.budgets, r)
		keep[r.spec.ID], keep[r.spec.ID+"/local"] = true, true
	}
	for i := range p.RateLimits {
		cr := &p.RateLimits[i]
		r := &rateRule{cr: cr, spec: NewRateSpec(cr.RateLimit), per: cr.Per, shadow: cr.Mode == policy.ModeShadow, onFail: cr.OnStoreFailure}
		r.counter = e.metrics.ruleCounters(KindRateLimit, cr.Name)
		r.err = r.spec.checkBounds()
		st.broken = st.broken || r.err != nil
		st.rates = append(st.rates, r)
		keep[r.spec.ID], keep[r.spec.ID+"/local"] = true, true
	}
	return func() { e.commit(st, keep) }, nil
}

// commit swaps in a prepared state: the second phase of PreparePolicy.
func (e *Engine) commit(st *engineState, keep map[string]bool) {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	p := st.policy
	for _, r := range st.budgets {
		if r.err != nil {
			e.log.Error("budget cannot run; it follows its onStoreFailure", "rule", r.cb.Name, "onStoreFailure", string(r.onFail), "policyHash", p.Hash, "err", r.err)
		}
	}
	for _, r := range st.rates {
		if r.err != nil {
			e.log.Error("rate limit cannot run; it follows its onStoreFailure", "rule", r.cr.Name, "onStoreFailure", string(r.onFail), "policyHash", p.Hash, "err", r.err)
		}
	}
	// The series of the fronts this process runs exist from the swap on, at zero.
	fronts := e.metrics.fronts.Load()
	for _, r := range st.budgets {
		resolveFronts(KindBudget, &r.counter, fronts)
		for _, c := range r.near {
			c.(*lazyCounter).resolve()
		}
	}
	for _, r := range st.rates {
		resolveFronts(KindRateLimit, &r.counter, fronts)
	}
	old := e.state.Load()
	var carried []string
	if old != nil {
		// Before the swap, so no decision creates a new key first.
		carried = e.carryBreakers(old, st)
	}
	e.state.Store(st)
	if old != nil {
		e.metrics.forgetRemoved(old.policy, p)
		e.guard.forgetRemoved(old.policy, p)
	}
	specs := map[string]*BudgetSpec{}
	n := e.replicas()
	for _, r := range st.budgets {
		specs[r.spec.ID] = r.spec
		if sh := r.spec.Share(n); sh != r.spec {
			specs[sh.ID] = sh
		}
	}
	e.store.Retain(keep, specs)
	e.fallback.Retain(keep, specs)
	if old != nil {
		e.log.Info("limiter policy applied", "policyHash", p.Hash, "previous", old.policy.Hash, "breakersCarriedOver", carried)
	}
}

// carryBreakers copies the Open breakers of every budget whose windows (so
// store ID) a reload changes to the new ID, in the shared store and in the
// local fallback, and returns them as "rule key" for the log.
func (e *Engine) carryBreakers(old, cur *engineState) []string {
	prev := map[string]*budgetRule{}
	for _, r := range old.budgets {
		prev[r.cb.Name] = r
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var carried []string
	n := e.replicas()
	for _, r := range cur.budgets {
		o := prev[r.cb.Name]
		if o == nil || o.spec.ID == r.spec.ID || o.err != nil || r.err != nil || !o.spec.Breaker.Enabled || !r.spec.Breaker.Enabled {
			continue
		}
		for i, s := range []Store{e.store, e.fallback} {
			from, to := o.spec, r.spec
			if i == 1 {
				from, to = o.spec.Share(n), r.spec.Share(n)
			}
			keys, err := s.CarryBreakers(ctx, from, to)
			if err != nil {
				e.log.Error("failed to carry open breakers over to the new windows; they may read Closed until they trip again",
					"rule", r.cb.Name, "err", err)
			}
			if i == 0 {
				for _, k := range keys {
					carried = append(carried, r.cb.Name+" "+displayKey(k))
				}
			}
		}
	}
	sort.Strings(carried)
	return carried
}
