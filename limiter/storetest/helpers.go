package storetest

import (
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// PodDelete is alice deleting pod name in namespace ns, charging budgets.
func PodDelete(ns, name string) *limiter.Attributes {
	return &limiter.Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "pods", Namespace: ns, Name: name, User: "alice"}, Checks: limiter.CheckBudgets}
}

// Reload reloads e with p, both phases, as the policy watcher does.
func Reload(t Fataler, e *limiter.Engine, p *policy.Compiled) {
	t.Helper()
	commit, err := e.PreparePolicy(p)
	if err != nil {
		t.Fatalf("PreparePolicy: %v", err)
	}
	commit()
}
