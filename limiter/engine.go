package limiter

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

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
	// denials keeps the denial log bounded (denylog.go).
	denials *denialLog
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
		denials:     newDenialLog(cfg.Clock, cfg.Logger, denialLogInterval, denialLogKeys),
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

// Run does the engine's background work until ctx is done: it writes the
// denial log's summary lines as their intervals end (and those pending when
// ctx is done), and keeps the engine's own fallback store tidy (forgetting
// idle keys) when the engine made it (EngineConfig.Fallback nil). Call it
// once, in its own goroutine.
func (e *Engine) Run(ctx context.Context) {
	var wg sync.WaitGroup
	if e.ownFallback != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.ownFallback.Run(ctx)
		}()
	}
	e.denials.run(ctx)
	wg.Wait()
}

// Policy returns the policy the engine judges with.
func (e *Engine) Policy() *policy.Compiled { return e.state.Load().policy }
