package policy

import "testing"

func TestCascadesDefaultsToPerObjectAndAtRootIsAcceptedWhereItCounts(t *testing.T) {
	cases := []struct {
		name, budget string
		want         CascadeMode
	}{
		{"no cascades is PerObject", `{verbs: [delete], resources: [pods]}`, CascadesPerObject},
		{"AtRoot on pods", `{verbs: [delete, evict], resources: [pods]}`, CascadesAtRoot},
		{"AtRoot on every verb", `{resources: [services]}`, CascadesAtRoot},
		{"AtRoot on every resource", `{verbs: ["*"], resources: ["*"]}`, CascadesAtRoot},
		{"AtRoot with one namespaced resource among cluster-scoped ones", `{verbs: [deletecollection], resources: [nodes, pods]}`, CascadesAtRoot},
		{"AtRoot on a custom resource", `{verbs: [delete], resources: [example.com/widgets]}`, CascadesAtRoot},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cascades := ""
			if c.want == CascadesAtRoot {
				cascades = "\n    cascades: AtRoot"
			}
			doc := `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  budgets:
  - name: b
    match: ` + c.budget + cascades + `
    windows: [{window: 1m, limit: 20}]
`
			p, err := Parse("test.yaml", []byte(doc))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := p.Budgets[0].Cascades; got != c.want {
				t.Fatalf("cascades = %q, want %q", got, c.want)
			}
		})
	}
}

func TestCascadesPerObjectKeepsThePolicyHash(t *testing.T) {
	const doc = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  budgets:
  - name: b
    match: {verbs: [delete], resources: [pods]}
    windows: [{window: 1m, limit: 20}]
`
	implicit, err := Parse("a.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	explicit, err := Parse("b.yaml", []byte(doc+"    cascades: PerObject\n"))
	if err != nil {
		t.Fatal(err)
	}
	atRoot, err := Parse("c.yaml", []byte(doc+"    cascades: AtRoot\n"))
	if err != nil {
		t.Fatal(err)
	}
	// The hash a policy without cascades had before the field existed.
	const before = "12b17ddd42b8"
	if implicit.Hash != explicit.Hash || implicit.Hash != before || atRoot.Hash == before {
		t.Fatalf("hashes: implicit %s, explicit PerObject %s, AtRoot %s; want the first two %s and AtRoot another", implicit.Hash, explicit.Hash, atRoot.Hash, before)
	}
	if implicit.Budgets[0].Cascades != CascadesPerObject {
		t.Fatal("hashing blanked the compiled policy's default")
	}
}
