package proxy

import (
	"context"
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
		d := decide(r.Context(), cfg.Engine, &st.attrs, budgetChecks, st.applyPatch)
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
//     admission sees (budgetVerbs: a patch is an update, a server-side apply
//     an update and a create, a deletecollection a delete; a create on a
//     subresource other than pods/eviction none), and are skipped for the
//     requests policy.Exemption exempts — the very function the webhook
//     calls — so that break-glass and KubeDefender's own namespace keep
//     working under an open breaker, and in the namespaces the policy
//     excludes (spec.exemptions.excludeNamespaces, kube-system by default),
//     which the webhook configuration leaves out.
//
// applyPatch marks a server-side apply PATCH. a is restored before decide
// returns. When both kinds of rule see the same verb the engine is asked
// once, as before.
func decide(ctx context.Context, e *limiter.Engine, a *limiter.Attributes, budgetChecks limiter.Checks, applyPatch bool) limiter.Decision {
	p := e.Policy()
	verb := a.Verb
	var bverb, also string
	if policy.Exemption(&a.Attributes, p.Policy.Spec.BreakGlass.Namespace) == "" && !p.Policy.Spec.Excludes(a.Namespace) {
		bverb, also = budgetVerbs(p, &a.Attributes, applyPatch)
	}
	if bverb == "" {
		a.Checks = limiter.CheckRateLimits
		return e.Decide(ctx, a)
	}
	if bverb == verb && also == "" {
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
	if d.Allowed && also != "" {
		a.Verb = also
		d2 := e.Decide(ctx, a)
		if len(d.Warnings) > 0 {
			d2.Warnings = append(d.Warnings, d2.Warnings...)
		}
		if d2.Override == "" {
			d2.Override = d.Override
		}
		d2.Fallback = d2.Fallback || d.Fallback
		d2.Charged = d2.Charged || d.Charged
		d = d2
	}
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

// budgetVerbs returns the verbs budgets judge a request by at the proxy:
// what the webhook would see for it. "" means budgets and breakers do not
// judge it at all; also, when set, is a second verb the request is judged
// by after the first.
//
//   - A create on a subresource other than pods/eviction (which is the verb
//     "evict" by now) is not judged: exec, attach, portforward and binding
//     POSTs are CONNECTs or subresource creates to admission, and the
//     webhook judges no subresource create but evictions.
//   - A patch reaches admission as an update. A server-side apply patch
//     (applyPatch) creates the object when it does not exist, and the proxy
//     cannot know whether it does: it is judged by the budgets that apply to
//     it as an update and by those that apply to it as a create. A budget
//     naming both verbs sees it once, as an update, unless budgets on each
//     verb alone also apply: then it is asked for both and charged twice.
//   - A deletecollection reaches admission as one delete per item; the proxy
//     sees one request, so it is judged as one delete (one token), unless no
//     budget applies to it as a delete while one names deletecollection
//     itself: then it stays a deletecollection, so such budgets keep
//     working at the proxy.
func budgetVerbs(p *policy.Compiled, a *policy.Attributes, applyPatch bool) (verb, also string) {
	switch a.Verb {
	case "create":
		if a.Subresource != "" {
			return "", ""
		}
	case "patch":
		if !applyPatch {
			return "update", ""
		}
		asUpdate, asCreate := *a, *a
		asUpdate.Verb, asCreate.Verb = "update", "create"
		updateOnly, createOnly := false, false
		for i := range p.Budgets {
			u, c := p.Budgets[i].Applies(&asUpdate), p.Budgets[i].Applies(&asCreate)
			updateOnly = updateOnly || u && !c
			createOnly = createOnly || c && !u
		}
		switch {
		case createOnly && updateOnly:
			return "update", "create"
		case createOnly:
			return "create", ""
		}
		return "update", ""
	case "deletecollection":
		asDelete := *a
		asDelete.Verb = "delete"
		named := false
		for i := range p.Budgets {
			if p.Budgets[i].Applies(&asDelete) {
				return "delete", ""
			}
			named = named || p.Budgets[i].Applies(a)
		}
		if named {
			return a.Verb, ""
		}
		return "delete", ""
	}
	return a.Verb, ""
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
