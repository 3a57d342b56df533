// Package limitertest owns the fixtures that the tests of package limiter
// and of its stores share and that need no limiter type: the policy
// documents they run. Package limiter's own tests cannot import storetest
// (it imports limiter), so what both sides use lives here.
package limitertest

import (
	"testing"

	"github.com/kubedefender/kubedefender/policy"
)

// EnginePolicy is the policy the engine tests run: a per-namespace budget
// with a Manual breaker (pod-deletes), a cluster-wide one with an Auto
// breaker (node-deletes), a Shadow budget (svc-deletes) and a rate limit
// (agent-lists).
const EnginePolicy = `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete, deletecollection, evict], resources: [pods]}
    exclude: {users: ["system:serviceaccount:kube-system:generic-garbage-collector"]}
    per: [namespace]
    windows: [{window: 1m, limit: 3}, {window: 1h, limit: 10}]
    breaker: {recovery: Manual}
    onStoreFailure: Local
  - name: node-deletes
    match: {verbs: [delete], resources: [nodes]}
    windows: [{window: 1m, limit: 2}]
    breaker: {recovery: Auto, cooldown: 5m, halfOpenLimit: 1}
    onStoreFailure: Deny
  - name: svc-deletes
    mode: Shadow
    match: {verbs: [delete], resources: [services]}
    per: [namespace]
    windows: [{window: 1m, limit: 1}]
    onStoreFailure: Allow
  rateLimits:
  - name: agent-lists
    match: {verbs: [list], userAgents: ["^node-agent/"]}
    per: [user, userAgent]
    qps: 1
    burst: 2
`

// Parse compiles a policy document or fails the test.
func Parse(t testing.TB, doc string) *policy.Compiled {
	t.Helper()
	c, err := policy.Parse("test.yaml", []byte(doc))
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	return c
}
