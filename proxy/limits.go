package proxy

import (
	"log/slog"
	"net/http"

	"github.com/kubedefender/kubedefender/limiter"
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
func WithLimits(cfg LimitsConfig, next http.Handler) http.Handler {
	if cfg.Engine == nil {
		return next
	}
	checks := limiter.CheckRateLimits | limiter.CheckBreakers
	if cfg.BudgetsAtProxy {
		checks = limiter.CheckRateLimits | limiter.CheckBudgets
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := stateOf(r)
		st.attrs.Checks = checks
		d := cfg.Engine.Decide(r.Context(), &st.attrs)
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
