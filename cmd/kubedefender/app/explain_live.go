package app

import (
	"fmt"
	"strings"
	"time"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// judgeLive reads a replica's /status answer and says, per applying rule and
// for the request, what that replica would decide now. /status reports the
// statusKeys fullest keys of each rule: a key not among them is certainly
// unused when the rule reports fewer, and otherwise at most as full as the
// last one reported (the verdict is then not certain).
func judgeLive(ex *Explanation, c *policy.Compiled, a policy.Attributes, server string, st *replicaStatus, now time.Time) {
	sv := &ServerVerdict{Server: server, PolicyHash: st.Engine.PolicyHash, Allowed: true, Certain: true}
	ex.Server = sv
	var denials, notes []string
	if st.Engine.PolicyHash != c.Hash {
		notes = append(notes, fmt.Sprintf("the server runs policy %s (hash %s), not this file's (hash %s): its rules of the same names are read", st.Engine.Policy, st.Engine.PolicyHash, c.Hash))
	}
	overrides := make([]limiter.Override, 0, len(st.Engine.Overrides))
	for _, o := range st.Engine.Overrides {
		if o.Active {
			overrides = append(overrides, limiter.Override{Name: o.Name, Namespace: o.Namespace, Budgets: o.Budgets, RateLimits: o.RateLimits,
				Namespaces: o.Namespaces, Users: o.Users, ExpiresAt: o.ExpiresAt})
		}
	}
	wa, _, _ := webhookView(a)
	// settled says whether rule m needs no live reading: it does not apply,
	// or an active override covers it for attrs (m.Live then names it).
	settled := func(m *RuleMatch, kind limiter.RuleKind, attrs *policy.Attributes) bool {
		if !m.Applies {
			return true
		}
		for i := range overrides {
			if overrides[i].Covers(kind, m.Name, attrs, now) {
				m.Live = "bypassed by active override " + overrides[i].Name
				return true
			}
		}
		return false
	}
	for i := range ex.Budgets {
		m := &ex.Budgets[i]
		if settled(m, limiter.KindBudget, &wa) {
			continue
		}
		var bs *limiter.BudgetStatus
		for j := range st.Engine.Budgets {
			if st.Engine.Budgets[j].Name == m.Name {
				bs = &st.Engine.Budgets[j]
			}
		}
		if bs == nil {
			m.Live = "the server runs no budget of this name"
			continue
		}
		var ks *limiter.KeyStatus
		for j := range bs.Keys {
			if bs.Keys[j].Key == m.Key {
				ks = &bs.Keys[j]
			}
		}
		if ks == nil {
			if len(bs.Keys) < statusKeys {
				m.Live = "no request counted for this key: room in every window"
			} else {
				m.Live = fmt.Sprintf("not among the %d fullest keys the server reports: at most as full as those", statusKeys)
				sv.Certain = false
			}
			continue
		}
		var full []string
		var used []string
		for _, w := range ks.Windows {
			used = append(used, fmt.Sprintf("%s %d/%d", w.Window, w.Used, w.Limit))
			if w.Used >= w.Limit {
				full = append(full, w.Window)
			}
		}
		m.Live = "breaker " + ks.Breaker + ", windows " + strings.Join(used, "  ")
		deny := ""
		switch {
		case ks.Breaker == limiter.Open.String():
			deny = fmt.Sprintf("budget %s key %s: breaker Open", m.Name, m.Key)
		case len(full) > 0:
			deny = fmt.Sprintf("budget %s key %s: window %s full", m.Name, m.Key, strings.Join(full, ", "))
		}
		if deny != "" {
			if m.Mode == string(policy.ModeShadow) {
				notes = append(notes, "shadow "+deny+" (would deny; Shadow only reports)")
			} else {
				denials = append(denials, deny)
			}
		}
	}
	for i := range ex.RateLimits {
		m := &ex.RateLimits[i]
		if settled(m, limiter.KindRateLimit, &a) {
			continue
		}
		m.Live = "the server runs no rate limit of this name"
		for _, rs := range st.Engine.RateLimits {
			if rs.Name != m.Name {
				continue
			}
			// the hottest keys, the emptiest bucket first (as budgets)
			if len(rs.Hottest) < statusKeys {
				m.Live = "no request counted for this key: a full bucket"
			} else {
				m.Live = fmt.Sprintf("not among the %d emptiest buckets the server reports: at least as many tokens left as those", statusKeys)
				sv.Certain = false
			}
			for _, k := range rs.Hottest {
				if k.Key == m.Key {
					m.Live = fmt.Sprintf("%.1f tokens left", k.Tokens)
					if k.Tokens < 1 && m.Mode != string(policy.ModeShadow) {
						denials = append(denials, fmt.Sprintf("rate limit %s key %s: no token left", m.Name, m.Key))
					}
				}
			}
		}
	}
	if ex.Exempt != "" {
		denials = nil
	}
	switch {
	case len(denials) > 0:
		sv.Allowed, sv.Message = false, "denied now: "+strings.Join(denials, "; ")
	case !sv.Certain:
		sv.Message = "allowed now, unless a key the server did not report is full (or out of tokens)"
	default:
		sv.Message = "allowed now"
	}
	if len(notes) > 0 {
		sv.Message += " (" + strings.Join(notes, "; ") + ")"
	}
}
