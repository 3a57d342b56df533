package limiter

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kubedefender/kubedefender/policy"
)

// metrics are the limiter's Prometheus metrics. Labels are bounded: rule
// names, windows, fronts and results; never users, user agents or namespaces.
type metrics struct {
	decisions     *prometheus.CounterVec
	transitions   *prometheus.CounterVec
	nearLimit     *prometheus.CounterVec
	storeErrors   *prometheus.CounterVec
	storeFallback *prometheus.CounterVec
	overridesUsed *prometheus.CounterVec
	// budgets are the gauges read from the store by RefreshMetrics.
	budgets *budgetGauges
	// fronts has bit 1<<f set once the process said it runs front f
	// (DeclareFronts): only those fronts' decision series exist before
	// their first decision.
	fronts atomic.Uint32
}

func newMetrics() *metrics {
	const ns, sub = "kubedefender", "limiter"
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "decisions_total",
			Help: "Decisions per rule: front (webhook, proxy, explain), kind (budget, rateLimit), result (allowed, denied, shadow-denied, overridden)."},
			[]string{"front", "kind", "rule", "result"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "breaker_transitions_total",
			Help: "Breaker transitions per budget, by the state entered (Open, HalfOpen, Closed)."}, []string{"rule", "to"}),
		nearLimit: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "near_limit_total",
			Help: "Admitted requests that left a budget window at least 80% used."}, []string{"rule", "window"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "store_errors_total",
			Help: "Decisions the shared store could not answer, by operation (budgets, rates)."}, []string{"op"}),
		storeFallback: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "store_fallback_total",
			Help: "Rule checks decided by onStoreFailure because the store was unreachable, by kind and action (Local, Allow, Deny)."}, []string{"kind", "action"}),
		overridesUsed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "overrides_used_total",
			Help: "Requests that bypassed a rule through a break-glass override."}, []string{"rule"}),
		budgets: newBudgetGauges(ns, sub),
	}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.decisions, m.transitions, m.nearLimit, m.budgets, m.storeErrors, m.storeFallback, m.overridesUsed} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("failed to register limiter metrics: %w", err)
		}
	}
	return nil
}

// ruleCounters builds a rule's counters, so the hot path only adds; no
// series exists yet. A reload's commit creates those of the fronts the
// process runs (resolveFronts, at zero, so that increase() sees the first
// decision); the others appear with their first decision.
func (m *metrics) ruleCounters(kind RuleKind, rule string) ruleCounters {
	var c ruleCounters
	for f := Front(0); f < numFronts; f++ {
		for r := 0; r < numResults; r++ {
			c[f][r] = &lazyCounter{vec: m.decisions, labels: []string{f.String(), kind.String(), rule, resultNames[r]}}
		}
	}
	return c
}

// resolveFronts creates, at zero, the series of c for the fronts set in the
// bit set fronts. Rate limits are never judged by the webhook.
func resolveFronts(kind RuleKind, c *ruleCounters, fronts uint32) {
	for f := Front(0); f < numFronts; f++ {
		if fronts&(1<<f) == 0 || !preinit(kind, f) {
			continue
		}
		for _, lc := range c[f] {
			lc.(*lazyCounter).resolve()
		}
	}
}

func preinit(kind RuleKind, f Front) bool { return kind != KindRateLimit || f != FrontWebhook }

// DeclareFronts says which fronts this process runs (serve calls it once per
// front it starts): their decision series are created at zero for every
// rule, now and after each reload. A front never declared has no series
// until it decides something (policy explain, or a front built in a test).
func (e *Engine) DeclareFronts(fronts ...Front) {
	var bits uint32
	for _, f := range fronts {
		bits |= 1 << f
	}
	e.metrics.fronts.Or(bits)
	st := e.state.Load()
	for _, r := range st.budgets {
		resolveFronts(KindBudget, &r.counter, bits)
	}
	for _, r := range st.rates {
		resolveFronts(KindRateLimit, &r.counter, bits)
	}
}

// lazyCounter is one decision or near-limit series, created in its vector
// at its first use, or when a reload commits it (near-limit, and the
// decisions of declared fronts) or its front is declared. Only Inc and Add
// are used; the engine never registers it.
type lazyCounter struct {
	vec    *prometheus.CounterVec
	labels []string
	c      atomic.Pointer[prometheus.Counter]
}

var _ prometheus.Counter = (*lazyCounter)(nil)

func (l *lazyCounter) resolve() prometheus.Counter {
	if c := l.c.Load(); c != nil {
		return *c
	}
	c := l.vec.WithLabelValues(l.labels...)
	l.c.Store(&c)
	return c
}

func (l *lazyCounter) Inc()                                { l.resolve().Inc() }
func (l *lazyCounter) Add(v float64)                       { l.resolve().Add(v) }
func (l *lazyCounter) Desc() *prometheus.Desc              { return l.resolve().Desc() }
func (l *lazyCounter) Write(m *dto.Metric) error           { return l.resolve().Write(m) }
func (l *lazyCounter) Describe(ch chan<- *prometheus.Desc) { l.resolve().Describe(ch) }
func (l *lazyCounter) Collect(ch chan<- prometheus.Metric) { l.resolve().Collect(ch) }

// forgetRemoved drops the series of rules that a reload removed.
func (m *metrics) forgetRemoved(old, cur *policy.Compiled) {
	for _, name := range removedRules(old, cur) {
		m.decisions.DeletePartialMatch(prometheus.Labels{"rule": name})
		m.transitions.DeletePartialMatch(prometheus.Labels{"rule": name})
		m.nearLimit.DeletePartialMatch(prometheus.Labels{"rule": name})
		m.overridesUsed.DeletePartialMatch(prometheus.Labels{"rule": name})
	}
	m.budgets.retain(ruleNames(cur))
}

// ruleNames is the set of the names of p's budgets and rate limits.
func ruleNames(p *policy.Compiled) map[string]bool {
	names := map[string]bool{}
	for _, b := range p.Budgets {
		names[b.Name] = true
	}
	for _, r := range p.RateLimits {
		names[r.Name] = true
	}
	return names
}

// removedRules lists the rules of old that cur no longer has, the names
// whose series a reload drops.
func removedRules(old, cur *policy.Compiled) []string {
	keep := ruleNames(cur)
	var gone []string
	for name := range ruleNames(old) {
		if !keep[name] {
			gone = append(gone, name)
		}
	}
	return gone
}

// MetricsRefreshInterval is how often serve refreshes the gauges read from
// the store (RunMetrics).
const MetricsRefreshInterval = 15 * time.Second

// budgetGauges are kubedefender_limiter_budget_remaining_ratio{rule,window}
// and kubedefender_limiter_breakers_open{rule,recovery}: a snapshot of the
// store that RefreshMetrics replaces whole, so a scrape never sees half a
// refresh and a rule a reload removed leaves no series behind.
type budgetGauges struct {
	remaining, open *prometheus.Desc
	snap            atomic.Pointer[map[string]ruleGauges]
}

// ruleGauges is what one refresh read of one budget.
type ruleGauges struct {
	windows   []string
	remaining []float64
	recovery  string // "" without a breaker (no breakers_open series)
	open      int
}

func newBudgetGauges(ns, sub string) *budgetGauges {
	g := &budgetGauges{
		remaining: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "budget_remaining_ratio"),
			"Per budget and window, the smallest share still free over the budget's keys (its 2000 busiest at most; 0 for a key whose breaker is Open; 1 when no key has been charged), read from the store every 15s.",
			[]string{"rule", "window"}, nil),
		open: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "breakers_open"),
			"Per budget with a breaker, how many of its keys have the breaker Open (of its 2000 busiest keys at most), read from the store every 15s; a Manual breaker stays Open until an override resets it.",
			[]string{"rule", "recovery"}, nil),
	}
	g.snap.Store(&map[string]ruleGauges{})
	return g
}

func (g *budgetGauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.remaining
	ch <- g.open
}

func (g *budgetGauges) Collect(ch chan<- prometheus.Metric) {
	for rule, rg := range *g.snap.Load() {
		for j, w := range rg.windows {
			ch <- prometheus.MustNewConstMetric(g.remaining, prometheus.GaugeValue, rg.remaining[j], rule, w)
		}
		if rg.recovery != "" {
			ch <- prometheus.MustNewConstMetric(g.open, prometheus.GaugeValue, float64(rg.open), rule, rg.recovery)
		}
	}
}

// retain drops the gauges of rules not in keep.
func (g *budgetGauges) retain(keep map[string]bool) {
	for {
		old := g.snap.Load()
		next := make(map[string]ruleGauges, len(*old))
		for rule, rg := range *old {
			if keep[rule] {
				next[rule] = rg
			}
		}
		if g.snap.CompareAndSwap(old, &next) {
			return
		}
	}
}

// RefreshMetrics reads every budget's keys from the store (charging nothing)
// and replaces the remaining-ratio and open-breaker gauges. A budget the
// store cannot answer for keeps the values of the last refresh that read it
// (a Manual breaker does not close because Redis is briefly unreachable).
// RunMetrics calls it on a timer; it is safe to call concurrently with
// decisions and reloads.
func (e *Engine) RefreshMetrics(ctx context.Context) {
	st := e.state.Load()
	prev := *e.metrics.budgets.snap.Load()
	next := make(map[string]ruleGauges, len(st.budgets))
	for _, r := range st.budgets {
		rg := ruleGauges{}
		for _, w := range r.spec.Windows {
			rg.windows = append(rg.windows, policy.FormatDuration(w.Length))
			rg.remaining = append(rg.remaining, 1)
		}
		if r.spec.Breaker.Enabled {
			rg.recovery = string(policy.RecoveryAuto)
			if r.spec.Breaker.Manual {
				rg.recovery = string(policy.RecoveryManual)
			}
		}
		keys, err := e.store.InspectBudget(ctx, r.spec, InspectScanCap)
		if err != nil {
			if p, ok := prev[r.cb.Name]; ok && slices.Equal(p.windows, rg.windows) && p.recovery == rg.recovery {
				next[r.cb.Name] = p
			}
			continue
		}
		for i := range keys {
			k := &keys[i]
			if k.State == Open {
				rg.open++
			}
			for j, w := range r.spec.Windows {
				free := max(0, float64(w.Limit-k.Used[j])/float64(w.Limit))
				if k.State == Open {
					free = 0
				}
				rg.remaining[j] = min(rg.remaining[j], free)
			}
		}
		next[r.cb.Name] = rg
	}
	e.metrics.budgets.snap.Store(&next)
}

// RunMetrics refreshes the gauges read from the store now and then every
// interval (MetricsRefreshInterval when ≤ 0) until ctx is done.
func (e *Engine) RunMetrics(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = MetricsRefreshInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, interval)
		e.RefreshMetrics(rctx)
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
