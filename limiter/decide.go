package limiter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"
	"unsafe"

	"github.com/kubedefender/kubedefender/policy"
)

// Deciding: Decide matches a request, builds its keys in a pooled arena,
// judges its rate limits and then its budgets, each kind in one store call,
// and turns the store's answer into a Decision (or, when the store fails,
// into what each rule's onStoreFailure says).

// Decide judges one request. It never blocks longer than the store's own
// timeout, and allocates nothing on the allow path. It never panics: a panic
// while deciding, or a rule the stores cannot run, makes each rule the
// request matches follow its onStoreFailure (see decideDegraded).
func (e *Engine) Decide(ctx context.Context, a *Attributes) (d Decision) {
	st := e.state.Load()
	if st.broken {
		return e.decideDegraded(ctx, st, a, nil)
	}
	defer func() {
		if p := recover(); p != nil {
			d = e.decideDegraded(ctx, st, a, p)
		}
	}()
	checks := a.Checks
	if checks == 0 {
		checks = CheckBudgets | CheckRateLimits
	}
	sc := e.pool.Get().(*scratch)
	defer e.pool.Put(sc)
	sc.arena = sc.arena[:0]
	d = Decision{Allowed: true}
	ovs := *e.overrides.Load()
	if checks&CheckRateLimits != 0 && len(st.rates) > 0 {
		e.decideRates(ctx, &job{store: e.store, st: st, a: a, sc: sc, ovs: ovs}, &d)
		if !d.Allowed {
			return d
		}
	}
	if checks&(CheckBudgets|CheckBreakers) != 0 && len(st.budgets) > 0 {
		commit := checks&CheckBudgets != 0 && !a.DryRun
		e.decideBudgets(ctx, &job{store: e.store, st: st, a: a, sc: sc, ovs: ovs, commit: commit, breakersOnly: checks&CheckBudgets == 0}, &d)
		d.Repeat = sc.budget.Repeat
		d.Charged = commit && d.Allowed && sc.budget.Admitted && !d.Repeat && len(sc.budget.Checks) > 0
	}
	return d
}

// key writes the rule key for a request into the arena and returns it as a
// string that is valid until the scratch is reused.
func (sc *scratch) key(per []string, a *policy.Attributes) string {
	if len(per) == 0 {
		return ""
	}
	start := len(sc.arena)
	for i, dim := range per {
		if i > 0 {
			sc.arena = append(sc.arena, ',')
		}
		sc.arena = append(sc.arena, dim...)
		sc.arena = append(sc.arena, '=')
		switch dim {
		case policy.PerNamespace:
			sc.arena = append(sc.arena, a.Namespace...)
		case policy.PerUser:
			sc.arena = append(sc.arena, a.User...)
		case policy.PerUserAgent:
			ua := a.UserAgent
			if len(ua) > maxUserAgentKey {
				ua = ua[:maxUserAgentKey]
			}
			sc.arena = append(sc.arena, ua...)
		}
	}
	b := sc.arena[start:]
	return unsafe.String(&b[0], len(b))
}

// maxUserAgentKey bounds the part of a User-Agent that goes into a key.
const maxUserAgentKey = 256

// job is one store call of a decision: what is judged, against which rules,
// on which store. Decide makes one per kind of rule on the shared store; the
// degraded path makes one per rule (guard.go).
type job struct {
	// store is the shared store, or the fallback for a rule's Local share.
	store Store
	// st holds the rules to judge (all of the policy, or one).
	st *engineState
	a  *Attributes
	sc *scratch
	// ovs are the overrides in force.
	ovs []Override
	// commit takes tokens (budgets; not a dry run, not a breaker check).
	commit bool
	// breakersOnly judges budget breakers only (CheckBreakers): a denial
	// comes from an Open breaker and nothing is counted.
	breakersOnly bool
}

func (e *Engine) decideRates(ctx context.Context, j *job, d *Decision) {
	st, a, sc, ovs := j.st, j.a, j.sc, j.ovs
	sc.rate.Reset()
	sc.rrules = sc.rrules[:0]
	var now time.Time
	for _, r := range st.rates {
		if !r.cr.Applies(&a.Attributes) {
			continue
		}
		if len(ovs) > 0 {
			if now.IsZero() {
				now = e.clock.Now()
			}
			if o := coveringOverride(ovs, KindRateLimit, r.cr.Name, &a.Attributes, now); o != nil {
				r.counter[a.Front][resultOverridden].Inc()
				e.metrics.overridesUsed.WithLabelValues(r.cr.Name).Inc()
				d.Override = o.Name
				continue
			}
		}
		sc.rate.Checks = append(sc.rate.Checks, RateCheck{Spec: r.spec, Key: sc.key(r.per, &a.Attributes), Shadow: r.shadow})
		sc.rrules = append(sc.rrules, r)
	}
	if len(sc.rate.Checks) == 0 {
		return
	}
	err := e.askRates(ctx, j.store, &sc.rate)
	if err != nil {
		e.rateStoreFailure(ctx, sc, err, d)
		if !d.Allowed {
			return
		}
	} else {
		e.storeRecovered()
	}
	for i, res := range sc.rate.Results {
		r := sc.rrules[i]
		switch {
		case res.Skipped:
		case res.Allowed:
			r.counter[a.Front][resultAllowed].Inc()
		case r.shadow:
			r.counter[a.Front][resultShadowDenied].Inc()
			d.Warnings = append(d.Warnings, rateMessage(r, sc.rate.Checks[i].Key, res, &a.Attributes, true))
		default:
			r.counter[a.Front][resultDenied].Inc()
			key := sc.rate.Checks[i].Key
			*d = Decision{
				Allowed: false, Err: ErrRateLimited, Kind: KindRateLimit, Rule: r.cr.Name, Key: strings.Clone(key), RetryAfter: res.RetryAfter,
				Message: rateMessage(r, key, res, &a.Attributes, false), Warnings: d.Warnings, Fallback: d.Fallback,
			}
			d.Code, d.Reason = denialStatus(d.Err, false)
			if e.denials.first(KindRateLimit, d.Rule, d.Key) {
				e.log.Info("request rate-limited", "front", a.Front.String(), "rule", r.cr.Name, "key", d.Key,
					"verb", a.Verb, "resource", a.Resource, "user", a.User, "retryAfter", res.RetryAfter)
			}
		}
	}
}

// rateStoreFailure re-decides a rate batch the shared store could not answer,
// rule by rule as onStoreFailure says.
func (e *Engine) rateStoreFailure(ctx context.Context, sc *scratch, err error, d *Decision) {
	e.noteStoreFailure("rates", err)
	d.Fallback = true
	n := e.replicas()
	checks := sc.rate.Checks
	sc.rate.Results = sc.rate.Results[:0]
	for i, c := range checks {
		r := sc.rrules[i]
		e.metrics.storeFallback.WithLabelValues(KindRateLimit.String(), string(r.onFail)).Inc()
		switch r.onFail {
		case policy.StoreFailureDeny:
			if !r.shadow {
				*d = storeDownDecision(KindRateLimit, r.cr.Name, c.Key)
				return
			}
			sc.rate.Results = append(sc.rate.Results, RateResult{Allowed: true})
		case policy.StoreFailureLocal:
			one := RateBatch{Checks: []RateCheck{{Spec: r.spec.Share(n), Key: c.Key, Shadow: c.Shadow}}}
			if ferr := e.fallback.Rates(ctx, &one); ferr != nil || len(one.Results) == 0 {
				sc.rate.Results = append(sc.rate.Results, RateResult{Allowed: true})
				continue
			}
			sc.rate.Results = append(sc.rate.Results, one.Results[0])
		default:
			sc.rate.Results = append(sc.rate.Results, RateResult{Allowed: true})
		}
	}
}

func (e *Engine) decideBudgets(ctx context.Context, j *job, d *Decision) {
	st, a, sc, ovs, commit, breakersOnly := j.st, j.a, j.sc, j.ovs, j.commit, j.breakersOnly
	sc.budget.Reset()
	sc.rules = sc.rules[:0]
	var now time.Time
	for _, r := range st.budgets {
		if r.atRoot && (a.FollowUp || len(a.Removes) > 0) {
			e.cascadeChecks(sc, r, a, ovs, &now, breakersOnly, d)
			continue
		}
		if !r.cb.Applies(&a.Attributes) {
			continue
		}
		if e.overridden(r, &a.Attributes, a.Front, ovs, &now, breakersOnly, d) {
			continue
		}
		sc.budget.Checks = append(sc.budget.Checks, BudgetCheck{Spec: r.spec, Key: sc.key(r.per, &a.Attributes), Shadow: r.shadow})
		sc.rules = append(sc.rules, r)
	}
	if len(sc.budget.Checks) == 0 {
		return
	}
	sc.budget.Commit = commit
	if commit && a.ChargeOnce != "" {
		sc.budget.Once, sc.budget.OnceTTL = a.ChargeOnce, e.onceTTL
	}
	if err := e.askBudgets(ctx, j.store, &sc.budget); err != nil {
		e.budgetStoreFailure(ctx, sc, err, d)
		if !d.Allowed {
			return
		}
	} else {
		e.storeRecovered()
	}
	b := &sc.budget
	if b.Repeat {
		return // a repeat of a request already charged: nothing was judged
	}
	deny := -1
	for i := range b.Results {
		res := &b.Results[i]
		r := sc.rules[i]
		if commit && res.Prev != res.State {
			e.metrics.transitions.WithLabelValues(r.cb.Name, res.State.String()).Inc()
			// Keys live in the pooled arena: a log record gets a copy.
			e.log.Warn("breaker "+res.State.String(), "rule", r.cb.Name, "key", strings.Clone(b.Checks[i].Key), "from", res.Prev.String())
		}
		if breakersOnly && res.Reason != BreakerIsOpen && res.Reason != HalfOpenFull {
			continue
		}
		if res.Allowed {
			if !breakersOnly {
				e.countAllowed(a.Front, r, b.Checks[i].Key, res, commit && b.Admitted)
			}
			continue
		}
		if r.shadow {
			if !breakersOnly {
				r.counter[a.Front][resultShadowDenied].Inc()
			}
			d.Warnings = append(d.Warnings, budgetMessage(r, &b.Checks[i], res, b.Now, a, true))
			continue
		}
		if !breakersOnly {
			r.counter[a.Front][resultDenied].Inc()
		}
		if deny < 0 || stronger(res, &b.Results[deny]) {
			deny = i
		}
	}
	if deny < 0 {
		return
	}
	res := &b.Results[deny]
	r := sc.rules[deny]
	key := b.Checks[deny].Key
	nd := Decision{
		Allowed: false, Kind: KindBudget, Rule: r.cb.Name, Key: strings.Clone(key), RetryAfter: res.RetryAfter,
		State: res.State, Warnings: d.Warnings, Override: d.Override, Fallback: d.Fallback, Cost: b.Checks[deny].Cost,
		Message: budgetMessage(r, &b.Checks[deny], res, b.Now, a, false),
	}
	w := res.Window
	if w < 0 {
		w = tightest(r.spec, res)
	}
	nd.Window, nd.Used, nd.Limit = r.spec.Windows[w].Length, res.Used[w], r.spec.Windows[w].Limit
	if res.State != Closed || res.Reason != WindowExhausted {
		nd.Err = ErrBreakerOpen
	} else {
		nd.Err = ErrBudgetExhausted
	}
	nd.Code, nd.Reason = denialStatus(nd.Err, r.spec.Breaker.Manual && res.State == Open)
	*d = nd
	if !e.denials.first(KindBudget, nd.Rule, nd.Key) {
		return // counted; the interval's summary line says how many
	}
	e.log.Warn("request denied", "front", a.Front.String(), "rule", r.cb.Name, "key", nd.Key, "verb", a.Verb,
		"resource", a.Resource, "namespace", a.Namespace, "name", a.Name, "user", a.User,
		"window", policy.FormatDuration(nd.Window), "used", nd.Used, "limit", nd.Limit, "breaker", res.State.String(),
		"cost", max(nd.Cost, 1), "dryRun", a.DryRun)
}

// stronger reports whether denial x tells the client more than y: a Manual
// breaker (no retry helps) first, then the longest wait.
func stronger(x, y *BudgetResult) bool {
	xm, ym := x.RetryAfter == 0, y.RetryAfter == 0
	if xm != ym {
		return xm
	}
	return x.RetryAfter > y.RetryAfter
}

// tightest returns the window with the least room left.
func tightest(spec *BudgetSpec, res *BudgetResult) int {
	best, bestRoom := 0, int64(math.MaxInt64)
	for j, w := range spec.Windows {
		if room := w.Limit - res.Used[j]; room < bestRoom {
			best, bestRoom = j, room
		}
	}
	return best
}

func (e *Engine) countAllowed(f Front, r *budgetRule, key string, res *BudgetResult, charged bool) {
	r.counter[f][resultAllowed].Inc()
	if !charged {
		return
	}
	for j, w := range r.spec.Windows {
		used := res.Used[j]
		if used >= w.Limit-w.Limit/5 { // used*5 >= limit*4, without overflowing for huge limits
			r.near[j].Inc()
		}
	}
}

// budgetStoreFailure re-decides a budget batch the shared store could not
// answer, as each rule's onStoreFailure says. Rules with Deny deny the request
// (and then nothing is charged anywhere); Local rules are judged all-or-nothing
// on the fallback store with this replica's share; Allow rules admit.
func (e *Engine) budgetStoreFailure(ctx context.Context, sc *scratch, err error, d *Decision) {
	e.noteStoreFailure("budgets", err)
	d.Fallback = true
	b := &sc.budget
	for i, c := range b.Checks {
		r := sc.rules[i]
		e.metrics.storeFallback.WithLabelValues(KindBudget.String(), string(r.onFail)).Inc()
		if r.onFail == policy.StoreFailureDeny && !c.Shadow {
			*d = storeDownDecision(KindBudget, r.cb.Name, c.Key)
			return
		}
	}
	n := e.replicas()
	sc.local.Reset()
	sc.local.Commit, sc.local.Once, sc.local.OnceTTL = b.Commit, b.Once, b.OnceTTL
	var localIdx [16]int
	idx := localIdx[:0]
	for i, c := range b.Checks {
		r := sc.rules[i]
		if r.onFail != policy.StoreFailureLocal {
			continue
		}
		sc.local.Checks = append(sc.local.Checks, BudgetCheck{Spec: r.spec.Share(n), Key: c.Key, Shadow: c.Shadow, Cost: c.Cost})
		idx = append(idx, i)
	}
	b.Results = b.Results[:0]
	for range b.Checks {
		b.Results = append(b.Results, BudgetResult{Allowed: true, Window: -1})
	}
	b.Admitted, b.Now = true, e.clock.Now()
	if len(idx) == 0 {
		return
	}
	if ferr := e.fallback.Budgets(ctx, &sc.local); ferr != nil {
		return
	}
	for j, i := range idx {
		b.Results[i] = sc.local.Results[j]
	}
	b.Admitted, b.Repeat, b.Now = sc.local.Admitted, sc.local.Repeat, sc.local.Now
}

// storeRecovered logs, once, that the store answers again.
func (e *Engine) storeRecovered() {
	if e.storeDown.Load() && e.storeDown.Swap(false) {
		e.log.Info("shared store reachable again; decisions use it")
	}
}

func (e *Engine) noteStoreFailure(op string, err error) {
	e.metrics.storeErrors.WithLabelValues(op).Inc()
	if !e.storeDown.Swap(true) {
		e.log.Error("shared store unreachable; rules follow onStoreFailure", "op", op, "err", err)
	}
}

func storeDownDecision(kind RuleKind, rule, key string) Decision {
	d := Decision{
		Allowed: false, Err: ErrStoreUnavailable, Kind: kind, Rule: rule, Key: strings.Clone(key), RetryAfter: time.Second, Fallback: true,
		Message: fmt.Sprintf("kubedefender: %s %q (key %s) cannot be checked: the shared store is unreachable and the rule says onStoreFailure: Deny; retry shortly",
			kind, rule, displayKey(key)),
	}
	d.Code, d.Reason = denialStatus(d.Err, false)
	return d
}

// denialStatus is the HTTP status and Kubernetes reason of a denial, decided
// by its sentinel error: 503 when the rule could not be judged (the store is
// unreachable, or the engine failed on it), 403 for an Open Manual breaker
// (manualOpen; no retry helps), else 429 (a window, a bucket, an Auto breaker).
func denialStatus(err error, manualOpen bool) (int, string) {
	switch {
	case errors.Is(err, ErrStoreUnavailable), errors.Is(err, ErrEngineFailure):
		return http.StatusServiceUnavailable, "ServiceUnavailable"
	case manualOpen && errors.Is(err, ErrBreakerOpen):
		return http.StatusForbidden, "Forbidden"
	}
	return http.StatusTooManyRequests, "TooManyRequests"
}

// askBudgets asks the store and checks its answer; stores measure their own latency.
func (e *Engine) askBudgets(ctx context.Context, s Store, b *BudgetBatch) error {
	err := s.Budgets(ctx, b)
	if err == nil && len(b.Results) != len(b.Checks) {
		err = fmt.Errorf("failed to judge budgets: store returned %d results for %d checks", len(b.Results), len(b.Checks))
	}
	return err
}

func (e *Engine) askRates(ctx context.Context, s Store, b *RateBatch) error {
	err := s.Rates(ctx, b)
	if err == nil && len(b.Results) != len(b.Checks) {
		err = fmt.Errorf("failed to judge rate limits: store returned %d results for %d checks", len(b.Results), len(b.Checks))
	}
	return err
}
