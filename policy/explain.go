package policy

import (
	"fmt"
	"strings"
)

// Explain says whether the rule applies to a and why, in words: "matched",
// "no match: verb get is not one of [delete]; ...", or "excluded: ...". m and
// ex are the rule's source match and exclude (for the names in the message);
// the verdict itself comes from the compiled matchers, the ones the engine
// uses, one condition at a time, so it cannot disagree with Applies.
func (r *Rule) Explain(a *Attributes, m, ex *Match) (applies bool, why string) {
	if !r.Match.Matches(a) {
		return false, "no match: " + strings.Join(r.Match.mismatches(a, m), "; ")
	}
	if !r.Exclude.Empty() && r.Exclude.Matches(a) {
		return false, "excluded: " + excludedBy(ex)
	}
	return true, "matched"
}

// mismatches lists each condition of c that a fails, checking each with a
// matcher that holds only that condition.
func (c *Matcher) mismatches(a *Attributes, m *Match) []string {
	var out []string
	fails := func(only Matcher) bool { return !only.Matches(a) }
	if c.verbs != 0 && fails(Matcher{verbs: c.verbs}) {
		out = append(out, fmt.Sprintf("verb %s is not one of %v", a.Verb, m.Verbs))
	}
	if len(c.resources) > 0 && fails(Matcher{resources: c.resources}) {
		out = append(out, fmt.Sprintf("resource %s is not one of %v", ResourceEntry(a.APIGroup, a.Resource, ""), m.Resources))
	}
	if len(c.namespaces) > 0 && fails(Matcher{namespaces: c.namespaces}) {
		if a.Namespace == "" {
			out = append(out, fmt.Sprintf("the request is cluster-scoped and the rule names namespaces %v", m.Namespaces))
		} else {
			out = append(out, fmt.Sprintf("namespace %s is not one of %v", a.Namespace, m.Namespaces))
		}
	}
	subject := Matcher{users: c.users, groups: c.groups, saExact: c.saExact, saNS: c.saNS}
	if (len(c.users) > 0 || len(c.groups) > 0 || len(c.saExact) > 0 || len(c.saNS) > 0) && fails(subject) {
		var names []string
		if len(m.Users) > 0 {
			names = append(names, fmt.Sprintf("users %v", m.Users))
		}
		if len(m.Groups) > 0 {
			names = append(names, fmt.Sprintf("groups %v", m.Groups))
		}
		if len(m.ServiceAccounts) > 0 {
			names = append(names, fmt.Sprintf("serviceAccounts %v", m.ServiceAccounts))
		}
		out = append(out, fmt.Sprintf("user %q (groups %v) is none of %s", a.User, a.Groups, strings.Join(names, ", ")))
	}
	if len(c.userAgents) > 0 && fails(Matcher{userAgents: c.userAgents}) {
		out = append(out, fmt.Sprintf("User-Agent %q matches none of %v", a.UserAgent, m.UserAgents))
	}
	if len(out) == 0 {
		out = append(out, "the request fails the rule's match") // not reached: every condition is checked above
	}
	return out
}

// excludedBy describes an exclude block.
func excludedBy(ex *Match) string {
	if ex == nil {
		return "the rule's exclude"
	}
	var parts []string
	add := func(name string, list []string) {
		if len(list) > 0 {
			parts = append(parts, fmt.Sprintf("%s %v", name, list))
		}
	}
	add("verbs", ex.Verbs)
	add("resources", ex.Resources)
	add("namespaces", ex.Namespaces)
	add("users", ex.Users)
	add("groups", ex.Groups)
	add("serviceAccounts", ex.ServiceAccounts)
	add("userAgents", ex.UserAgents)
	return "the rule's exclude matches (" + strings.Join(parts, ", ") + ")"
}

// ResourceEntry writes a resource as a resources entry of a policy names it:
// [group/]resource[/subresource] ("pods", "apps/deployments",
// "pods/eviction", "apps/deployments/scale"); the core group is empty.
func ResourceEntry(group, resource, subresource string) string {
	s := resource
	if group != "" {
		s = group + "/" + s
	}
	if subresource != "" {
		s += "/" + subresource
	}
	return s
}
