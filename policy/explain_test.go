package policy

import (
	"strings"
	"testing"
)

// TestRuleExplainAgreesWithApplies checks, over every combination of a few
// values of each attribute, that Explain's verdict is Applies' verdict and
// that a rule that does not apply always says why.
func TestRuleExplainAgreesWithApplies(t *testing.T) {
	c, err := Load("../examples/production.yaml")
	if err != nil {
		t.Fatal(err)
	}
	verbs := []string{"get", "list", "create", "update", "delete", "evict", "deletecollection"}
	resources := [][2]string{{"", "pods"}, {"", "nodes"}, {"apps", "deployments"}, {"", "services"}, {"", "namespaces"}}
	namespaces := []string{"", "prod", "kube-system"}
	users := []string{"alice", "system:serviceaccount:kube-system:generic-garbage-collector", "system:serviceaccount:kube-system:namespace-controller"}
	agents := []string{"", "kubectl/v1.31", "node-agent/2"}
	n := 0
	for _, v := range verbs {
		for _, r := range resources {
			for _, ns := range namespaces {
				for _, u := range users {
					for _, ua := range agents {
						a := &Attributes{Verb: v, APIGroup: r[0], Resource: r[1], Namespace: ns, User: u, UserAgent: ua, Groups: []string{"system:authenticated"}}
						check := func(name string, rule *Rule, m, ex *Match) {
							applies, why := rule.Explain(a, m, ex)
							if applies != rule.Applies(a) {
								t.Errorf("%s on %+v: Explain says %v (%s), Applies says %v", name, *a, applies, why, !applies)
							}
							if !applies && !strings.HasPrefix(why, "no match: ") && !strings.HasPrefix(why, "excluded: ") {
								t.Errorf("%s on %+v: a rule that does not apply says %q", name, *a, why)
							}
							n++
						}
						for i := range c.Budgets {
							check(c.Budgets[i].Name, &c.Budgets[i].Rule, &c.Budgets[i].Budget.Match, c.Budgets[i].Budget.Exclude)
						}
						for i := range c.RateLimits {
							check(c.RateLimits[i].Name, &c.RateLimits[i].Rule, &c.RateLimits[i].RateLimit.Match, c.RateLimits[i].RateLimit.Exclude)
						}
					}
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no rule was checked")
	}
}

func TestResourceEntryWritesTheResourceAsAPolicyNamesIt(t *testing.T) {
	cases := []struct {
		name                         string
		group, resource, subresource string
		want                         string
	}{
		{name: "a core resource is its name", resource: "pods", want: "pods"},
		{name: "a grouped resource carries its group", group: "apps", resource: "deployments", want: "apps/deployments"},
		{name: "a core subresource follows its resource", resource: "pods", subresource: "eviction", want: "pods/eviction"},
		{name: "a grouped subresource has all three", group: "apps", resource: "deployments", subresource: "scale", want: "apps/deployments/scale"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := ResourceEntry(tc.group, tc.resource, tc.subresource); got != tc.want {
				t.Errorf("ResourceEntry(%q, %q, %q) = %q, want %q", tc.group, tc.resource, tc.subresource, got, tc.want)
			}
		})
	}
}
