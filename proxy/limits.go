package proxy

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// LimitsConfig configures WithLimits.
type LimitsConfig struct {
	Engine *limiter.Engine
	// BudgetsAtProxy charges budgets; otherwise only open breakers deny.
	BudgetsAtProxy bool
	Metrics        *metrics
	Logger         *slog.Logger
}

// WithLimits asks the engine about the request's rate limits and budgets
// (charging them, with BudgetsAtProxy) or open breakers (charging nothing)
// and answers a denial itself: a Kubernetes Status with the engine's code
// (429, or 403 for a Manual breaker), reason, message naming the rule, and
// Retry-After. Shadow-mode warnings go to the client as Warning headers.
// See decide for which verb each kind of rule sees.
func WithLimits(cfg LimitsConfig, next http.Handler) http.Handler {
	if cfg.Engine == nil {
		return next
	}
	budgetChecks := limiter.CheckBreakers
	if cfg.BudgetsAtProxy {
		budgetChecks = limiter.CheckBudgets
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := stateOf(r)
		d := decide(r.Context(), cfg.Engine, &st.attrs, budgetChecks)
		for _, warn := range d.Warnings {
			w.Header().Add("Warning", `299 - "`+sanitizeWarning(warn)+`"`)
		}
		if d.Allowed {
			next.ServeHTTP(w, r)
			return
		}
		kind := d.Kind.String()
		if kind == "" {
			kind = "store"
		}
		cfg.Metrics.rejections.WithLabelValues(kind, d.Rule, d.Reason).Inc()
		writeStatus(w, d.Code, d.Reason, d.Message, d.RetryAfter)
	})
}

// decide judges a request as the API server will execute it:
//
//   - rate limits, and the flow schemas of the priority levels after this
//     filter, see the request's own verb;
//   - budgets and breakers (budgetChecks) see the verb the API server's
//     admission sees (budgetVerb: a patch is an update, a deletecollection a
//     delete), and are skipped for the requests policy.Exemption exempts —
//     the very function the webhook calls — so that break-glass and
//     KubeDefender's own namespace keep working under an open breaker, and
//     in the namespaces the policy excludes (spec.exemptions.excludeNamespaces,
//     kube-system by default), which the webhook configuration leaves out.
//
// a is restored before decide returns. When both kinds of rule see the same
// verb the engine is asked once, as before.
func decide(ctx context.Context, e *limiter.Engine, a *limiter.Attributes, budgetChecks limiter.Checks) limiter.Decision {
	p := e.Policy()
	if policy.Exemption(&a.Attributes, p.Policy.Spec.BreakGlass.Namespace) != "" || p.Policy.Spec.Excludes(a.Namespace) {
		a.Checks = limiter.CheckRateLimits
		return e.Decide(ctx, a)
	}
	verb := a.Verb
	bverb := budgetVerb(p, &a.Attributes)
	if bverb == verb {
		a.Checks = limiter.CheckRateLimits | budgetChecks
		return e.Decide(ctx, a)
	}
	a.Checks = limiter.CheckRateLimits
	rates := e.Decide(ctx, a)
	if !rates.Allowed {
		return rates
	}
	a.Checks, a.Verb = budgetChecks, bverb
	d := e.Decide(ctx, a)
	a.Verb = verb
	if len(rates.Warnings) > 0 {
		d.Warnings = append(rates.Warnings, d.Warnings...)
	}
	if d.Override == "" {
		d.Override = rates.Override
	}
	d.Fallback = d.Fallback || rates.Fallback
	return d
}

// budgetVerb is the verb budgets judge a request by at the proxy: what the
// webhook would see for it. A patch reaches admission as an update. A
// deletecollection reaches it as one delete per item; the proxy sees one
// request, so it is judged as one delete (one token), unless no budget
// applies to it as a delete while one names deletecollection itself: then
// it stays a deletecollection, so such budgets keep working at the proxy.
func budgetVerb(p *policy.Compiled, a *policy.Attributes) string {
	switch a.Verb {
	case "patch":
		return "update"
	case "deletecollection":
		asDelete := *a
		asDelete.Verb = "delete"
		named := false
		for i := range p.Budgets {
			if p.Budgets[i].Applies(&asDelete) {
				return "delete"
			}
			named = named || p.Budgets[i].Applies(a)
		}
		if named {
			return a.Verb
		}
		return "delete"
	}
	return a.Verb
}

// sanitizeWarning keeps a warning text a valid quoted header value.
func sanitizeWarning(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '"' || c == '\\' || c < 0x20 || c == 0x7f {
			b[i] = '\''
		}
	}
	return string(b)
}
