package policy

import (
	"strings"
	"testing"
)

func TestWarningsTellWhatAValidPolicyDoesThatItsAuthorMayNotMean(t *testing.T) {
	tests := []struct {
		name string
		spec string
		want []string // one warning line each, in order; none when empty
	}{
		{
			name: "a budget on every verb and every resource warns that it charges every create and update",
			spec: "  budgets:\n  - {name: all, match: {verbs: [\"*\"], resources: [\"*\"]}, windows: [{window: 1m, limit: 10}]}\n",
			want: []string{`spec.budgets[0].match: Invalid value: "verbs [*], resources [*]": charges every create and update of every resource`},
		},
		{
			name: "a budget without verbs or resources warns the same way",
			spec: "  budgets:\n  - {name: all, match: {namespaces: [prod]}, windows: [{window: 1m, limit: 10}]}\n",
			want: []string{`spec.budgets[0].match: Invalid value: "verbs [(any)], resources [(any)]": charges every create and update`},
		},
		{
			name: "a delete budget on every resource does not warn",
			spec: "  budgets:\n  - {name: all, match: {verbs: [delete], resources: [\"*\"]}, windows: [{window: 1m, limit: 10}]}\n",
		},
		{
			name: "a budget some of whose resources are exempt says which are never charged",
			spec: "  budgets:\n  - {name: b, match: {verbs: [delete], resources: [secrets, coordination.k8s.io/leases]}, windows: [{window: 1m, limit: 10}]}\n",
			want: []string{`spec.budgets[0].match.resources[1]: Invalid value: "coordination.k8s.io/leases": never charged by this budget: leases (leader election) are never charged`},
		},
		{
			name: "a budget on kube-system says the webhook configuration leaves it out by default",
			spec: "  budgets:\n  - {name: b, match: {verbs: [delete], resources: [secrets], namespaces: [kube-system]}, windows: [{window: 1m, limit: 10}]}\n",
			want: []string{`spec.budgets[0].match.namespaces[0]: Invalid value: "kube-system": ` + "spec.exemptions.excludeNamespaces (by default kube-system) takes kube-system out of every budget"},
		},
		{
			name: "a resource of any group close to a standard one suggests it",
			spec: "  rateLimits:\n  - {name: r, match: {resources: [\"*/deploymentz\"]}, qps: 1}\n",
			want: []string{`spec.rateLimits[0].match.resources[0]: Invalid value: "*/deploymentz": no standard API group serves "deploymentz" (fine for a custom resource); did you mean "*/deployments"?`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := mustParse(t, tc.spec)
			got := Warnings(c.Policy)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d warnings, want %d: %v", len(got), len(tc.want), got)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(got[i].Error(), w) {
					t.Errorf("warning %d = %q, want it to start with %q", i, got[i].Error(), w)
				}
			}
		})
	}
}

func TestCheckResourcesAgainstTheClusterReportsOnlyWhatTheBuiltinTableCannotKnow(t *testing.T) {
	c := mustParse(t, "  budgets:\n  - {name: b, match: {verbs: [delete], resources: [pods, example.com/widgets, example.com/gadgetz, other.io/things, \"*/sprockets\"]}, windows: [{window: 1m, limit: 10}]}\n")
	served := BuiltinResources()
	served["example.com"] = []string{"widgets", "gadgets"}
	errs, warns := CheckResources(c.Policy, served)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), `spec.budgets[0].match.resources[2]: Invalid value: "example.com/gadgetz": API group example.com serves no resource "gadgetz": did you mean "example.com/gadgets"?`) {
		t.Errorf("errors = %v, want one for example.com/gadgetz", errs)
	}
	if len(warns) != 2 || !strings.Contains(warns[0].Error(), `the cluster serves no API group "other.io"`) || !strings.Contains(warns[1].Error(), `no API group of the cluster serves "sprockets"`) {
		t.Errorf("warnings = %v, want other.io and */sprockets", warns)
	}
}

func TestExemptionsDefaultToHonouringTheLabelEverywhere(t *testing.T) {
	tests := []struct {
		name       string
		spec       string
		honoured   bool
		namespaces []string
	}{
		{"no exemptions field honours the label on every namespace", "", true, nil},
		{"namespaceLabel false turns it off", "  exemptions: {namespaceLabel: false}\n", false, nil},
		{"a namespace list restricts it", "  exemptions: {namespaces: [team-a]}\n", true, []string{"team-a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := mustParse(t, "  budgets:\n  - {name: b, match: {verbs: [delete], resources: [pods]}, windows: [{window: 1m, limit: 10}]}\n"+tc.spec)
			if got := c.Policy.Spec.NamespaceLabelHonoured(); got != tc.honoured {
				t.Errorf("NamespaceLabelHonoured = %v, want %v", got, tc.honoured)
			}
			if got := c.Policy.Spec.LabelExemptNamespaces(); strings.Join(got, ",") != strings.Join(tc.namespaces, ",") {
				t.Errorf("LabelExemptNamespaces = %v, want %v", got, tc.namespaces)
			}
		})
	}
}
