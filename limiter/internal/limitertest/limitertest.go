// Package limitertest owns the fixtures that the tests of package limiter
// and of its stores share and that need no limiter type: the policy
// documents they run and the check of the gauges the engine reads from its
// store. Package limiter's own tests cannot import storetest
// (it imports limiter), so what both sides use lives here.
package limitertest

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

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

// ReloadPolicy is one per-namespace budget of 2 pod deletes a minute with a
// Manual breaker, that reload tests edit.
const ReloadPolicy = `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: reload}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: 2}]
    breaker: {recovery: Manual}
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

const gaugesHelp = `
# HELP kubedefender_limiter_breakers_open Per budget with a breaker, how many of its keys have the breaker Open (of its 2000 busiest keys at most), read from the store every 15s; a Manual breaker stays Open until an override resets it.
# TYPE kubedefender_limiter_breakers_open gauge
# HELP kubedefender_limiter_budget_remaining_ratio Per budget and window, the smallest share still free over the budget's keys (its 2000 busiest at most; 0 for a key whose breaker is Open; 1 when no key has been charged), read from the store every 15s.
# TYPE kubedefender_limiter_budget_remaining_ratio gauge
`

// CheckGauges compares the gauges the engine reads from its store
// (budget_remaining_ratio and breakers_open) in reg with series, their
// exposition lines without HELP and TYPE; a difference fails t (Errorf)
// with when.
func CheckGauges(t testing.TB, reg prometheus.Gatherer, when, series string) {
	t.Helper()
	if err := testutil.GatherAndCompare(reg, strings.NewReader(gaugesHelp+series),
		"kubedefender_limiter_budget_remaining_ratio", "kubedefender_limiter_breakers_open"); err != nil {
		t.Errorf("%s: %v", when, err)
	}
}

// EngineGauges is what those gauges read for the budgets of EnginePolicy.
type EngineGauges struct {
	// NodeOpen and PodOpen count the keys whose breaker is Open:
	// node-deletes' (Auto) and pod-deletes' (Manual).
	NodeOpen, PodOpen int
	// The remaining ratio of each budget and window.
	Node1m, Pod1h, Pod1m, Svc1m float64
}

// Series is g as the exposition lines CheckGauges takes.
func (g EngineGauges) Series() string {
	return fmt.Sprintf(`
kubedefender_limiter_breakers_open{recovery="Auto",rule="node-deletes"} %d
kubedefender_limiter_breakers_open{recovery="Manual",rule="pod-deletes"} %d
kubedefender_limiter_budget_remaining_ratio{rule="node-deletes",window="1m"} %v
kubedefender_limiter_budget_remaining_ratio{rule="pod-deletes",window="1h"} %v
kubedefender_limiter_budget_remaining_ratio{rule="pod-deletes",window="1m"} %v
kubedefender_limiter_budget_remaining_ratio{rule="svc-deletes",window="1m"} %v
`, g.NodeOpen, g.PodOpen, g.Node1m, g.Pod1h, g.Pod1m, g.Svc1m)
}
