package policy

import (
	"path/filepath"
	"slices"
	"testing"
)

func TestExamplesValidate(t *testing.T) {
	paths, err := filepath.Glob("../examples/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	more, err := filepath.Glob("../examples/testdata/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	paths = append(paths, more...)
	if len(paths) < 3 {
		t.Fatalf("found only %v under examples/", paths)
	}
	for _, p := range paths {
		t.Run(filepath.Base(p)+" loads and validates", func(t *testing.T) {
			if _, err := Load(p); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// rulesApplying names the budgets and rate limits that apply to a request.
func rulesApplying(c *Compiled, a *Attributes) []string {
	var names []string
	for i := range c.Budgets {
		if c.Budgets[i].Applies(a) {
			names = append(names, c.Budgets[i].Name)
		}
	}
	for i := range c.RateLimits {
		if c.RateLimits[i].Applies(a) {
			names = append(names, c.RateLimits[i].Name)
		}
	}
	return names
}

func TestProductionExampleChargesTheRootDeleteAndNotTheCascade(t *testing.T) {
	c, err := Load("../examples/production.yaml")
	if err != nil {
		t.Fatal(err)
	}
	gc := "system:serviceaccount:kube-system:generic-garbage-collector"
	nsController := "system:serviceaccount:kube-system:namespace-controller"
	tests := []struct {
		name  string
		attrs Attributes
		want  []string
		flow  string // "" = catch-all
	}{
		{
			name:  "a person deleting a namespace is charged by namespace-deletes",
			attrs: Attributes{Verb: "delete", Resource: "namespaces", Name: "shop", User: "alice", Groups: []string{"system:authenticated"}, UserAgent: "kubectl/v1.32"},
			want:  []string{"namespace-deletes", "per-user-catch-all"},
			flow:  "people",
		},
		{
			name:  "the namespace controller's pod deletes meet the AtRoot pod budget, which the webhook admits free as follow-ups",
			attrs: Attributes{Verb: "delete", Resource: "pods", Namespace: "shop", User: nsController, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system"}},
			want:  []string{"pod-deletes"},
			flow:  "kube-system-service-accounts",
		},
		{
			name:  "the namespace controller emptying it is not charged for services or deployments",
			attrs: Attributes{Verb: "delete", Resource: "services", Namespace: "shop", User: nsController, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system"}},
			want:  nil,
			flow:  "kube-system-service-accounts",
		},
		{
			name:  "a person deleting a deployment is charged by workload-deletes",
			attrs: Attributes{Verb: "delete", APIGroup: "apps", Resource: "deployments", Namespace: "shop", User: "alice", Groups: []string{"system:authenticated"}},
			want:  []string{"workload-deletes", "per-user-catch-all"},
			flow:  "people",
		},
		{
			name:  "the garbage collector deleting a deployment's replica sets is not charged",
			attrs: Attributes{Verb: "delete", APIGroup: "apps", Resource: "deployments", Namespace: "shop", User: gc, Groups: []string{"system:serviceaccounts"}},
			want:  nil,
			flow:  "kube-system-service-accounts",
		},
		{
			name:  "a person evicting a pod is charged by pod-deletes",
			attrs: Attributes{Verb: "evict", Resource: "pods", Subresource: "eviction", Namespace: "shop", User: "alice", Groups: []string{"system:authenticated"}},
			want:  []string{"pod-deletes", "per-user-catch-all"},
			flow:  "people",
		},
		{
			name:  "a node agent's list is limited per user and user agent and queued as a node",
			attrs: Attributes{Verb: "list", Resource: "pods", User: "system:node:worker-1", Groups: []string{"system:nodes"}, UserAgent: "fluent-bit/3.0"},
			want:  []string{"node-agent-reads"},
			flow:  "nodes",
		},
		{
			name:  "a cluster admin is not rate limited and never queues",
			attrs: Attributes{Verb: "list", Resource: "pods", User: "root", Groups: []string{"system:masters"}, UserAgent: "curl/8"},
			want:  nil,
			flow:  "masters",
		},
		{
			name:  "an anonymous request goes to catch-all and the shadow per-user limit",
			attrs: Attributes{Verb: "get", Resource: "namespaces", User: "system:anonymous", Groups: []string{"system:unauthenticated"}},
			want:  []string{"per-user-catch-all"},
			flow:  "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rulesApplying(c, &tt.attrs); !slices.Equal(got, tt.want) {
				t.Errorf("rules = %v, want %v", got, tt.want)
			}
			flow := ""
			if fs := c.FlowSchemaFor(&tt.attrs); fs != nil {
				flow = fs.Name
			}
			if flow != tt.flow {
				t.Errorf("flow schema = %q, want %q", flow, tt.flow)
			}
		})
	}
}

func TestBenchPolicyHasThirtyRulesAndOneMatchesTheBenchRequest(t *testing.T) {
	c, err := Load("../examples/testdata/bench-30-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Budgets) != 20 || len(c.RateLimits) != 10 {
		t.Errorf("got %d budgets and %d rate limits, want 20 and 10", len(c.Budgets), len(c.RateLimits))
	}
	a := Attributes{Verb: "get", Resource: "pods", Namespace: "default", Name: "web-0", User: "alice", Groups: []string{"system:authenticated"}, UserAgent: "kubectl/v1.32"}
	if got := rulesApplying(c, &a); !slices.Equal(got, []string{"kubectl-reads"}) {
		t.Errorf("rules applying to the bench request = %v, want [kubectl-reads]", got)
	}
}
