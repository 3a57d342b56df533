package policy

import "testing"

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
