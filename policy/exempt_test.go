package policy

import (
	"slices"
	"strings"
	"testing"
)

func TestExemption(t *testing.T) {
	tests := []struct {
		name   string
		a      Attributes
		exempt bool
	}{
		{name: "an override is exempt", a: Attributes{Verb: "delete", APIGroup: "kubedefender.io", Resource: "overrides", Namespace: "default"}, exempt: true},
		{name: "a pod in the own namespace is exempt", a: Attributes{Verb: "delete", Resource: "pods", Namespace: "kubedefender-system"}, exempt: true},
		{name: "the own namespace object itself is judged", a: Attributes{Verb: "delete", Resource: "namespaces", Name: "kubedefender-system", Namespace: "kubedefender-system"}},
		{name: "a lease is exempt", a: Attributes{Verb: "delete", APIGroup: "coordination.k8s.io", Resource: "leases", Namespace: "default"}, exempt: true},
		{name: "a core event is exempt", a: Attributes{Verb: "delete", Resource: "events", Namespace: "default"}, exempt: true},
		{name: "an events.k8s.io event is exempt", a: Attributes{Verb: "delete", APIGroup: "events.k8s.io", Resource: "events", Namespace: "default"}, exempt: true},
		{name: "a self subject review is exempt", a: Attributes{Verb: "create", APIGroup: "authentication.k8s.io", Resource: "selfsubjectreviews"}, exempt: true},
		{name: "a subject access review is exempt", a: Attributes{Verb: "create", APIGroup: "authorization.k8s.io", Resource: "subjectaccessreviews"}, exempt: true},
		{name: "a pod elsewhere is judged", a: Attributes{Verb: "delete", Resource: "pods", Namespace: "default"}},
		{name: "a resource named events in another group is judged", a: Attributes{Verb: "delete", APIGroup: "example.com", Resource: "events", Namespace: "default"}},
		{name: "leases in the core group are judged", a: Attributes{Verb: "delete", Resource: "leases", Namespace: "default"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			why := Exemption(&tt.a, "kubedefender-system")
			if (why != "") != tt.exempt {
				t.Fatalf("Exemption(%+v) = %q, want exempt=%v", tt.a, why, tt.exempt)
			}
		})
	}
}

func TestExcludedNamespaces(t *testing.T) {
	const head = "apiVersion: kubedefender.io/v1alpha1\nkind: DefenderPolicy\nmetadata: {name: t}\nspec:\n  budgets:\n  - {name: b, match: {verbs: [delete], resources: [pods]}, windows: [{window: 1m, limit: 1}]}\n"
	for _, tt := range []struct {
		name    string
		spec    string
		want    []string
		wantErr string
	}{
		{name: "unset is kube-system", want: []string{"kube-system"}},
		{name: "a list replaces the default", spec: "  exemptions: {excludeNamespaces: [batch, ci]}\n", want: []string{"batch", "ci"}},
		{name: "an empty list excludes none", spec: "  exemptions: {excludeNamespaces: []}\n", want: []string{}},
		{name: "a bad name is refused", spec: "  exemptions: {excludeNamespaces: [Bad_NS]}\n", wantErr: `spec.exemptions.excludeNamespaces[0]: Invalid value: "Bad_NS"`},
		{name: "a duplicate is refused", spec: "  exemptions: {excludeNamespaces: [ci, ci]}\n", wantErr: `spec.exemptions.excludeNamespaces[1]: Duplicate value: "ci"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("p.yaml", []byte(head+tt.spec))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := c.Policy.Spec.ExcludedNamespaces()
			if !slices.Equal(got, tt.want) {
				t.Fatalf("ExcludedNamespaces() = %q, want %q", got, tt.want)
			}
			for _, ns := range tt.want {
				if !c.Policy.Spec.Excludes(ns) {
					t.Errorf("Excludes(%q) = false", ns)
				}
			}
			if c.Policy.Spec.Excludes("") {
				t.Error(`Excludes("") = true`)
			}
		})
	}
}
