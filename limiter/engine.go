package limiter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/kubedefender/kubedefender/policy"
)

// Front names the enforcement point asking for a decision (a metric label).
type Front uint8

// Fronts.
const (
	FrontWebhook Front = iota
	FrontProxy
	FrontExplain
	numFronts
)

func (f Front) String() string {
	switch f {
	case FrontProxy:
		return "proxy"
	case FrontExplain:
		return "explain"
	}
	return "webhook"
}

// Checks selects what a decision evaluates.
type Checks uint8

// Checks. The zero value means CheckBudgets|CheckRateLimits.
const (
	// CheckBudgets charges the budgets the request matches.
	CheckBudgets Checks = 1 << iota
	// CheckRateLimits charges the rate limits the request matches.
	CheckRateLimits
	// CheckBreakers denies a request whose budget key has an open breaker,
	// charging nothing: the proxy's early reject when the webhook charges budgets.
	CheckBreakers
)

// Attributes are a request as the engine judges it.
type Attributes struct {
	policy.Attributes
	Front  Front
	Checks Checks
	// ChargeOnce, when set, identifies what the request charges (the webhook
	// passes the UID of the object being deleted): a repeat within
	// EngineConfig.ChargeOnceTTL of an admitted charge is admitted without
	// judging or charging, on every replica that shares the store.
	ChargeOnce string
	// Removes, set by the webhook on a root request (a namespace, workload
	// or node delete, a scale-down, a NoExecute taint), lists what it will
	// remove. A budget with cascades: AtRoot judges each entry as a delete
	// of Count objects of that resource in that namespace by the request's
	// user, and takes Count tokens from the key it falls in, all or nothing
	// across keys and windows in the one store call; PerObject budgets
	// ignore it. Empty: the request removes what it names, as today.
	Removes []Removal
	// FollowUp marks a delete or eviction that follows a root already judged
	// (its namespace is terminating, an owner is being deleted or was scaled
	// down by a charged root, its node is gone or tainted): AtRoot budgets
	// admit it free (counted with result "cascade"); PerObject budgets judge
	// it as usual.
	FollowUp bool
}

// Removal is one resource's share of what a root request removes.
type Removal struct {
	// APIGroup and Resource name what is removed, e.g. "" and "pods".
	APIGroup, Resource string
	// Namespace holds the removed objects; "" for cluster-scoped ones.
	Namespace string
	// Count is how many objects are removed; at least 1.
	Count int64
}

// RuleKind says which kind of rule decided.
type RuleKind uint8

// Rule kinds.
const (
	KindNone RuleKind = iota
	KindBudget
	KindRateLimit
)

func (k RuleKind) String() string {
	switch k {
	case KindBudget:
		return "budget"
	case KindRateLimit:
		return "rateLimit"
	}
	return ""
}

// Decision is the engine's answer for one request.
type Decision struct {
	Allowed bool
	// Code is the HTTP status of a denial: 429 (window exhausted, Auto
	// breaker, rate limit), 403 (Manual breaker) or 503 (store down, Deny).
	Code int
	// Reason is the Kubernetes StatusReason matching Code.
	Reason string
	// Err is ErrBudgetExhausted, ErrBreakerOpen, ErrRateLimited,
	// ErrStoreUnavailable or ErrEngineFailure.
	Err  error
	Kind RuleKind
	Rule string
	// Key is the budget or rate-limit key ("" cluster-wide).
	Key string
	// Window, Used and Limit describe the window that denied (budgets).
	Window      time.Duration
	Used, Limit int64
	RetryAfter  time.Duration
	State       BreakerState
	// Message says what happened and what to do, break-glass command included.
	Message string
	// Warnings report shadow-mode rules that would have denied.
	Warnings []string
	// Override names the override that let the request bypass a rule, if any.
	Override string
	// Fallback is set when onStoreFailure decided: the store was unreachable,
	// or the engine failed on a rule (ErrEngineFailure, decision_panics_total).
	Fallback bool
	// Repeat is set when the request repeats one already charged (ChargeOnce).
	Repeat bool
	// Cost is how many tokens the denying check asked of its key: 0 for a
	// request charged one token as usual; for a root request judged by a
	// cascades: AtRoot budget, the objects it removes that fall in that key.
	Cost int64
	// FollowUp is set when a cascades: AtRoot budget admitted the request
	// free as a follow-up of a root already charged (Attributes.FollowUp).
	FollowUp bool
	// Charged is set when the request matched at least one budget and was
	// admitted with a commit (not a dry run, not a repeat; with the store
	// down, admitted by onStoreFailure): the charge a caller may remember
	// for ChargeOnce. A request no budget matched charged nothing.
	Charged bool
}

// EngineConfig configures an Engine.
type EngineConfig struct {
	// Policy is the initial policy; required.
	Policy *policy.Compiled
	// Store holds the shared counters; nil is a new MemoryStore.
	Store Store
	// Fallback counts rules with onStoreFailure Local while Store is
	// unreachable; nil is a new MemoryStore on Clock.
	Fallback Store
	// Replicas returns how many replicas share Store; a replica's Local share
	// of each limit is limit/Replicas(). nil means 1.
	Replicas func() int
	// Clock judges override expiry (and drives default stores); nil is real time.
	Clock clock.PassiveClock
	// Logger receives denials and breaker transitions; nil discards.
	Logger *slog.Logger
	// Registerer takes the limiter metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// ChargeOnceTTL is how long a charge is remembered for Attributes.ChargeOnce
	// (default 2m).
	ChargeOnceTTL time.Duration
}

// Engine judges requests against a policy. It is safe for concurrent use;
// a reload (PreparePolicy, then its commit) and SetOverrides swap atomically.
type Engine struct {
	store     Store
	fallback  Store
	replicas  func() int
	clock     clock.PassiveClock
	log       *slog.Logger
	metrics   *metrics
	guard     *guardMetrics
	panicHash atomic.Pointer[string] // the policy whose panic was logged last
	state     atomic.Pointer[engineState]
	overrides atomic.Pointer[[]Override]
	pool      sync.Pool
	// storeDown avoids one log line per request during an outage.
	storeDown atomic.Bool
	onceTTL   time.Duration
	// ownFallback is the fallback when the engine made it (Run sweeps it).
	ownFallback *MemoryStore
	// reloadMu serialises commits of prepared policies.
	reloadMu sync.Mutex
}

type engineState struct {
	policy  *policy.Compiled
	budgets []*budgetRule
	rates   []*rateRule
	// broken is set when a rule's spec is one the stores cannot run (only a
	// policy that skipped validation has one): Decide then goes rule by rule.
	broken bool
}

type budgetRule struct {
	cb      *policy.CompiledBudget
	spec    *BudgetSpec
	per     []string
	shadow  bool
	onFail  policy.StoreFailurePolicy
	counter ruleCounters
	near    []prometheus.Counter
	// atRoot: cascades: AtRoot (see cascadeChecks).
	atRoot bool
	// err says why the stores cannot run spec; such a rule follows onStoreFailure.
	err error
}

type rateRule struct {
	cr      *policy.CompiledRateLimit
	spec    *RateSpec
	per     []string
	shadow  bool
	onFail  policy.StoreFailurePolicy
	counter ruleCounters
	err     error // see budgetRule.err
}

// Results counted per rule.
const (
	resultAllowed = iota
	resultDenied
	resultShadowDenied
	resultOverridden
	// resultCascade: a cascades: AtRoot budget admitted a follow-up free.
	resultCascade
	numResults
)

var resultNames = [numResults]string{"allowed", "denied", "shadow-denied", "overridden", "cascade"}

type ruleCounters [numFronts][numResults]prometheus.Counter

type scratch struct {
	arena  []byte
	budget BudgetBatch
	rules  []*budgetRule
	rate   RateBatch
	rrules []*rateRule
	local  BudgetBatch
}

// NewEngine builds an engine for cfg.Policy.
func NewEngine(cfg EngineConfig) (*Engine, error) {
	if cfg.Policy == nil {
		return nil, errors.New("failed to build engine: no policy")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Store == nil {
		cfg.Store = NewMemoryStore(MemoryConfig{Clock: cfg.Clock})
	}
	var ownFallback *MemoryStore
	if cfg.Fallback == nil {
		ownFallback = NewMemoryStore(MemoryConfig{Clock: cfg.Clock})
		cfg.Fallback = ownFallback
	}
	if cfg.Replicas == nil {
		cfg.Replicas = func() int { return 1 }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ChargeOnceTTL <= 0 {
		cfg.ChargeOnceTTL = 2 * time.Minute
	}
	e := &Engine{
		onceTTL:     cfg.ChargeOnceTTL,
		ownFallback: ownFallback,
		store:       cfg.Store,
		fallback:    cfg.Fallback,
		replicas:    cfg.Replicas,
		clock:       cfg.Clock,
		log:         cfg.Logger,
		metrics:     newMetrics(),
		guard:       newGuardMetrics(),
	}
	e.pool.New = func() any { return &scratch{arena: make([]byte, 0, 512)} }
	if cfg.Registerer != nil {
		if err := e.metrics.register(cfg.Registerer); err != nil {
			return nil, err
		}
		if err := e.guard.register(cfg.Registerer); err != nil {
			return nil, err
		}
	}
	e.overrides.Store(&[]Override{})
	commit, err := e.PreparePolicy(cfg.Policy)
	if err != nil {
		return nil, err
	}
	commit()
	return e, nil
}

// Run keeps the engine's own fallback store tidy (forgetting idle keys)
// until ctx is done, when the engine made it (EngineConfig.Fallback nil).
func (e *Engine) Run(ctx context.Context) {
	if e.ownFallback != nil {
		e.ownFallback.Run(ctx)
		return
	}
	<-ctx.Done()
}

// Policy returns the policy the engine judges with.
func (e *Engine) Policy() *policy.Compiled { return e.state.Load().policy }

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
				Allowed: false, Err: ErrRateLimited, Kind: KindRateLimit, Rule: r.cr.Name, Key: clone(key), RetryAfter: res.RetryAfter,
				Message: rateMessage(r, key, res, &a.Attributes, false), Warnings: d.Warnings, Fallback: d.Fallback,
			}
			d.Code, d.Reason = denialStatus(d.Err, false)
			e.log.Info("request rate-limited", "front", a.Front.String(), "rule", r.cr.Name, "key", d.Key,
				"verb", a.Verb, "resource", a.Resource, "user", a.User, "retryAfter", res.RetryAfter)
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
			e.log.Warn("breaker "+res.State.String(), "rule", r.cb.Name, "key", clone(b.Checks[i].Key), "from", res.Prev.String())
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
		Allowed: false, Kind: KindBudget, Rule: r.cb.Name, Key: clone(key), RetryAfter: res.RetryAfter,
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
		Allowed: false, Err: ErrStoreUnavailable, Kind: kind, Rule: rule, Key: clone(key), RetryAfter: time.Second, Fallback: true,
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

func clone(s string) string {
	if s == "" {
		return ""
	}
	return string([]byte(s))
}
