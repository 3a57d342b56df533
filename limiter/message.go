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
func budgetMessage(r *budgetRule, c *BudgetCheck, res *BudgetResult, now time.Time, ea *Attributes, shadow bool) string {
	if c.Cost > 0 {
		return cascadeMessage(r, c, res, now, ea, shadow)
	}
	key, a := c.Key, &ea.Attributes
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
	}
	budgetMessageTail(&b, r, res, a, shadow)
	return b.String()
}

// budgetMessageTail writes what a budget denial says after the window: an
// open breaker, the recovery, and the break-glass command for a's key.
func budgetMessageTail(b *strings.Builder, r *budgetRule, res *BudgetResult, a *policy.Attributes, shadow bool) {
	spec := r.spec
	switch res.Reason {
	case BreakerIsOpen:
		fmt.Fprintf(b, "the breaker is Open since %s (%s)", res.Since.UTC().Format(time.RFC3339), usage(spec, res))
	case HalfOpenFull:
		fmt.Fprintf(b, "the breaker is HalfOpen since %s and has admitted its %d probe requests (%s)",
			res.Since.UTC().Format(time.RFC3339), spec.Breaker.HalfOpenLimit, usage(spec, res))
	}
	switch {
	case !spec.Breaker.Enabled:
		b.WriteString(".")
	case spec.Breaker.Manual:
		b.WriteString("; recovery is Manual: every matching request is denied until an override resets the breaker.")
	default:
		fmt.Fprintf(b, "; recovery is Auto: retry after %s (after a cooldown of %s up to %d requests are admitted while HalfOpen).",
			roundDur(res.RetryAfter), policy.FormatDuration(spec.Breaker.Cooldown), spec.Breaker.HalfOpenLimit)
	}
	if !shadow {
		b.WriteString(" If this is intended, an authorized operator can grant a break-glass override: ")
		b.WriteString(breakGlassCommand("--budget", r.cb.Name, r.per, a))
	}
}

// cascadeMessage is budgetMessage for a check of a cascades: AtRoot budget
// on a root request: what the root removes in the key, and what is left,
// e.g. `deleting namespace "prod" removes 312 pods; budget "pods-down" (key
// namespace=prod) has 20 left in 1m`.
func cascadeMessage(r *budgetRule, c *BudgetCheck, res *BudgetResult, now time.Time, ea *Attributes, shadow bool) string {
	var b strings.Builder
	b.WriteString("kubedefender: ")
	if shadow {
		b.WriteString("shadow: ")
	}
	fmt.Fprintf(&b, "%s removes %s; ", rootRef(&ea.Attributes), removedIn(r, c, ea))
	if shadow {
		fmt.Fprintf(&b, "budget %q (key %s) would have denied it: ", r.cb.Name, displayKey(c.Key))
	} else {
		fmt.Fprintf(&b, "budget %q (key %s) denied it: ", r.cb.Name, displayKey(c.Key))
	}
	spec := r.spec
	if res.Reason == WindowExhausted {
		// Name the denying window with the least left (the store names the
		// one that frees up last, for RetryAfter).
		wi := res.Window
		for j, w := range spec.Windows {
			if left := w.Limit - res.Used[j]; c.Cost > left && left < spec.Windows[wi].Limit-res.Used[wi] {
				wi = j
			}
		}
		w := spec.Windows[wi]
		left := max(w.Limit-res.Used[wi], 0)
		fmt.Fprintf(&b, "it has %d left in %s (%d/%d used)", left, policy.FormatDuration(w.Length), res.Used[wi], w.Limit)
		switch {
		case c.Cost > MaxCost:
			fmt.Fprintf(&b, "; %d is more than one request may take from a budget key (%d), so only an override lets this through", c.Cost, MaxCost)
		case c.Cost > w.Limit:
			fmt.Fprintf(&b, "; %d is more than the window ever holds, so only an override lets this through", c.Cost)
		default:
			if free := freesIn(res, spec); free > 0 {
				fmt.Fprintf(&b, "; room for %d in %s (at %s)", c.Cost, roundDur(free), now.Add(free).UTC().Format(time.RFC3339))
			}
		}
		if spec.Breaker.Enabled {
			b.WriteString(". The breaker tripped and is now Open")
		}
	}
	// The break-glass command names the key that denied: a removal's
	// namespace, not the root's (a node delete has none).
	ka := ea.Attributes
	if rm := keyRemoval(r, c.Key, ea); rm != nil {
		ka = removalAttributes(ea, rm)
	}
	budgetMessageTail(&b, r, res, &ka, shadow)
	return b.String()
}

// rootRef names a root request, e.g. `deleting namespace "prod"`.
func rootRef(a *policy.Attributes) string {
	verb := a.Verb + "ing"
	switch a.Verb {
	case "delete", "deletecollection":
		verb = "deleting"
	case "update":
		verb = "updating"
	case "evict":
		verb = "evicting"
	}
	res := a.Resource
	if a.Subresource != "" {
		res += "/" + a.Subresource
	}
	if a.APIGroup != "" {
		res += "." + a.APIGroup
	}
	s := verb + " " + singular(res)
	if a.Name != "" {
		s += " " + quote(a.Name)
	}
	if a.Namespace != "" {
		s += " in namespace " + quote(a.Namespace)
	}
	return s
}

// singular turns a plural resource name into the word for one object
// ("namespaces" → "namespace"); a name it cannot turn is kept.
func singular(res string) string {
	name, rest, _ := strings.Cut(res, "/")
	if strings.HasSuffix(name, "s") && !strings.HasSuffix(name, "ss") {
		name = name[:len(name)-1]
	}
	if rest != "" {
		return name + "/" + rest
	}
	return name
}

// removedIn says what the root removes that falls in key of r: "312 pods",
// "300 pods, 12 services", and "the deployment itself" when r matched the
// root request.
func removedIn(r *budgetRule, c *BudgetCheck, ea *Attributes) string {
	var parts []string
	counts := map[string]int64{}
	var sc scratch
	for i := range ea.Removes {
		rm := &ea.Removes[i]
		if rm.Count <= 0 {
			continue
		}
		ra := removalAttributes(ea, rm)
		sc.arena = sc.arena[:0]
		if !r.cb.Applies(&ra) || sc.key(r.per, &ra) != c.Key {
			continue
		}
		res := rm.Resource
		if rm.APIGroup != "" {
			res += "." + rm.APIGroup
		}
		if _, ok := counts[res]; !ok {
			parts = append(parts, res)
		}
		counts[res] = addCost(counts[res], rm.Count)
	}
	var b strings.Builder
	for i, res := range parts {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d %s", counts[res], res)
	}
	sc.arena = sc.arena[:0]
	if r.cb.Applies(&ea.Attributes) && sc.key(r.per, &ea.Attributes) == c.Key {
		if b.Len() > 0 {
			b.WriteString(" and ")
		}
		b.WriteString("the " + singular(ea.Resource) + " itself")
	}
	if b.Len() == 0 {
		fmt.Fprintf(&b, "%d objects", c.Cost)
	}
	return b.String()
}

// keyRemoval returns a Removal of the root that r counts in key, or nil.
func keyRemoval(r *budgetRule, key string, ea *Attributes) *Removal {
	var sc scratch
	for i := range ea.Removes {
		rm := &ea.Removes[i]
		ra := removalAttributes(ea, rm)
		sc.arena = sc.arena[:0]
		if rm.Count > 0 && r.cb.Applies(&ra) && sc.key(r.per, &ra) == key {
			return rm
		}
	}
	return nil
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
