package limiter

import (
	"fmt"
	"strings"
	"time"

	"github.com/kubedefender/kubedefender/policy"
)

func displayKey(key string) string {
	if key == "" {
		return "cluster-wide"
	}
	return key
}

// budgetMessage says what denied the request and what to do about it. It
// runs on the deny path only.
func budgetMessage(r *budgetRule, key string, res *BudgetResult, now time.Time, a *policy.Attributes, shadow bool) string {
	var b strings.Builder
	if shadow {
		fmt.Fprintf(&b, "kubedefender: shadow budget %q (key %s) would have denied this %s: ", r.cb.Name, displayKey(key), a.Verb)
	} else {
		fmt.Fprintf(&b, "kubedefender: budget %q (key %s) denied %s of %s: ", r.cb.Name, displayKey(key), a.Verb, objectRef(a))
	}
	spec := r.spec
	switch res.Reason {
	case WindowExhausted:
		w := spec.Windows[res.Window]
		fmt.Fprintf(&b, "window %s is exhausted (%d/%d used)", policy.FormatDuration(w.Length), res.Used[res.Window], w.Limit)
		if free := freesIn(res, spec); free > 0 {
			fmt.Fprintf(&b, "; it frees up in %s (at %s)", roundDur(free), now.Add(free).UTC().Format(time.RFC3339))
		}
		if spec.Breaker.Enabled {
			b.WriteString(". The breaker tripped and is now Open")
		}
	case BreakerIsOpen:
		fmt.Fprintf(&b, "the breaker is Open since %s (%s)", res.Since.UTC().Format(time.RFC3339), usage(spec, res))
	case HalfOpenFull:
		fmt.Fprintf(&b, "the breaker is HalfOpen since %s and has admitted its %d probe requests (%s)",
			res.Since.UTC().Format(time.RFC3339), spec.Breaker.HalfOpenLimit, usage(spec, res))
	}
	switch {
	case !spec.Breaker.Enabled:
		b.WriteString(".")
	case spec.Breaker.Manual:
		b.WriteString("; recovery is Manual: every matching request is denied until an override resets the breaker.")
	default:
		fmt.Fprintf(&b, "; recovery is Auto: retry after %s (after a cooldown of %s up to %d requests are admitted while HalfOpen).",
			roundDur(res.RetryAfter), policy.FormatDuration(spec.Breaker.Cooldown), spec.Breaker.HalfOpenLimit)
	}
	if !shadow {
		b.WriteString(" If this is intended, an authorized operator can grant a break-glass override: ")
		b.WriteString(breakGlassCommand("--budget", r.cb.Name, r.per, a))
	}
	return b.String()
}

// freesIn is how long until the denying window has room, from RetryAfter
// before a breaker adjusted it.
func freesIn(res *BudgetResult, spec *BudgetSpec) time.Duration {
	if !spec.Breaker.Enabled {
		return res.RetryAfter
	}
	if spec.Breaker.Manual {
		return 0
	}
	return res.RetryAfter
}

func usage(spec *BudgetSpec, res *BudgetResult) string {
	parts := make([]string, 0, len(spec.Windows))
	for j, w := range spec.Windows {
		parts = append(parts, fmt.Sprintf("%s: %d/%d", policy.FormatDuration(w.Length), res.Used[j], w.Limit))
	}
	return "windows " + strings.Join(parts, ", ")
}

func rateMessage(r *rateRule, key string, res RateResult, a *policy.Attributes, shadow bool) string {
	if shadow {
		return fmt.Sprintf("kubedefender: shadow rate limit %q (key %s) would have denied this request: it allows %g requests/s with a burst of %d.",
			r.cr.Name, displayKey(key), r.spec.QPS, r.spec.Burst)
	}
	return fmt.Sprintf("kubedefender: rate limit %q (key %s) denied this request: it allows %g requests/s with a burst of %d; retry after %s. If this client needs more, an authorized operator can grant a break-glass override: %s",
		r.cr.Name, displayKey(key), r.spec.QPS, r.spec.Burst, roundDur(res.RetryAfter), breakGlassCommand("--rate-limit", r.cr.Name, r.per, a))
}

func objectRef(a *policy.Attributes) string {
	res := a.Resource
	if a.APIGroup != "" {
		res = a.Resource + "." + a.APIGroup
	}
	s := res
	if a.Name != "" {
		s += " " + quote(a.Name)
	}
	if a.Namespace != "" {
		s += " in namespace " + quote(a.Namespace)
	}
	return s
}

func quote(s string) string { return `"` + s + `"` }

// breakGlassCommand is the exact command that grants an override for the key
// that denied.
func breakGlassCommand(flag, rule string, per []string, a *policy.Attributes) string {
	cmd := "kubedefender breakglass grant " + flag + " " + rule
	for _, dim := range per {
		switch {
		case dim == policy.PerNamespace && a.Namespace != "":
			cmd += " --namespace " + a.Namespace
		case dim == policy.PerUser && a.User != "":
			cmd += " --user " + a.User
		}
	}
	return cmd + ` --for 30m --reason "<ticket>: <why>"`
}

func roundDur(d time.Duration) time.Duration {
	switch {
	case d <= 0:
		return 0
	case d < time.Second:
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}
