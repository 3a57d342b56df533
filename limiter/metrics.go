package limiter

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubedefender/kubedefender/policy"
)

// metrics are the limiter's Prometheus metrics. Labels are bounded: rule
// names, windows, fronts and results; never users, user agents or namespaces.
type metrics struct {
	decisions     *prometheus.CounterVec
	transitions   *prometheus.CounterVec
	nearLimit     *prometheus.CounterVec
	remaining     *prometheus.GaugeVec
	storeErrors   *prometheus.CounterVec
	storeFallback *prometheus.CounterVec
	overridesUsed *prometheus.CounterVec
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
		remaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "budget_remaining_ratio",
			Help: "Share of each window still free after the last admitted request, for cluster-wide budgets (per: [])."}, []string{"rule", "window"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "store_errors_total",
			Help: "Decisions the shared store could not answer, by operation (budgets, rates)."}, []string{"op"}),
		storeFallback: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "store_fallback_total",
			Help: "Rule checks decided by onStoreFailure because the store was unreachable, by kind and action (Local, Allow, Deny)."}, []string{"kind", "action"}),
		overridesUsed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "overrides_used_total",
			Help: "Requests that bypassed a rule through a break-glass override."}, []string{"rule"}),
	}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.decisions, m.transitions, m.nearLimit, m.remaining, m.storeErrors, m.storeFallback, m.overridesUsed} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("failed to register limiter metrics: %w", err)
		}
	}
	return nil
}

// ruleCounters resolves a rule's counters once, so the hot path only adds.
func (m *metrics) ruleCounters(kind RuleKind, rule string) ruleCounters {
	var c ruleCounters
	for f := Front(0); f < numFronts; f++ {
		for r := 0; r < numResults; r++ {
			c[f][r] = m.decisions.WithLabelValues(f.String(), kind.String(), rule, resultNames[r])
		}
	}
	return c
}

// forgetRemoved drops the series of rules that a reload removed.
func (m *metrics) forgetRemoved(old, cur *policy.Compiled) {
	keep := map[string]bool{}
	for _, b := range cur.Budgets {
		keep[b.Name] = true
	}
	for _, r := range cur.RateLimits {
		keep[r.Name] = true
	}
	forget := func(name string) {
		if keep[name] {
			return
		}
		m.decisions.DeletePartialMatch(prometheus.Labels{"rule": name})
		m.transitions.DeletePartialMatch(prometheus.Labels{"rule": name})
		m.nearLimit.DeletePartialMatch(prometheus.Labels{"rule": name})
		m.remaining.DeletePartialMatch(prometheus.Labels{"rule": name})
		m.overridesUsed.DeletePartialMatch(prometheus.Labels{"rule": name})
	}
	for _, b := range old.Budgets {
		forget(b.Name)
	}
	for _, r := range old.RateLimits {
		forget(r.Name)
	}
}
