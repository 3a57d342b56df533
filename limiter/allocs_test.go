//go:build !race

package limiter

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubedefender/kubedefender/policy"
)

// Tests that count allocations: not under -race, whose instrumentation
// allocates.

func TestEngineAllowPathAllocatesNothing(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{Registerer: prometheus.NewRegistry(), Policy: parse(t, `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: allocs}
spec:
  budgets:
  - name: cm-deletes
    match: {verbs: [delete], resources: [configmaps]}
    per: [namespace, user]
    windows: [{window: 1m, limit: 100000000}, {window: 1h, limit: 100000000}]
    breaker: {recovery: Manual}
  rateLimits:
  - name: lists
    match: {verbs: [list], userAgents: ["^node-agent/"]}
    per: [user, userAgent]
    qps: 1000000
    burst: 1000000
`)})
	ctx := context.Background()
	for _, a := range []*Attributes{
		{Attributes: policy.Attributes{Verb: "list", Resource: "pods", Namespace: "prod", User: "alice", UserAgent: "node-agent/1.0"}, Front: FrontProxy},
		{Attributes: policy.Attributes{Verb: "delete", Resource: "configmaps", Namespace: "prod", Name: "c", User: "alice"}},
		{Attributes: policy.Attributes{Verb: "get", Resource: "secrets", Namespace: "prod", User: "bob"}},
	} {
		for i := 0; i < 2000; i++ { // warm the key and grow its log past the measured runs
			e.Decide(ctx, a)
		}
		if n := testing.AllocsPerRun(1000, func() {
			if d := e.Decide(ctx, a); !d.Allowed {
				t.Fatalf("denied: %s", d.Message)
			}
		}); n != 0 {
			t.Errorf("Decide(%s %s) allocated %v times per call, want 0", a.Verb, a.Resource, n)
		}
	}
}

func TestCascadeDecisionsAllocateNothingWithoutRemoves(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{Policy: parse(t, cascadePolicy), Registerer: prometheus.NewRegistry()})
	ctx := context.Background()
	a := podDelete("prod", "p")
	a.Checks = CheckBreakers // judges, charges nothing: the same allocations on every run
	e.Decide(ctx, a)
	if n := testing.AllocsPerRun(100, func() { e.Decide(ctx, a) }); n != 0 {
		t.Fatalf("a pod delete under AtRoot budgets allocates %v times, want 0", n)
	}
}
