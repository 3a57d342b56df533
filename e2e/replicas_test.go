package e2e

import (
	"context"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/pki"
)

const sharedBudgetPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: replicas-e2e}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: 20}]
    breaker: {recovery: Manual}
`

// TestTwoReplicasShareOneBudget registers two webhook replicas behind one
// Redis with the API server in turn: the budget is one, whichever replica the
// API server calls.
func TestTwoReplicasShareOneBudget(t *testing.T) {
	// Given two kubedefender replicas on one Redis and a namespace of 24 pods
	cp := framework.Start(t, framework.Options{})
	redisURL := startRedis(t)
	bin := buildKubedefender(t)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	kd(t, bin, "certs", "generate", "--ip", "127.0.0.1", "--out-dir", certs)
	policyFile := filepath.Join(dir, "policy.yaml")
	writePolicy(t, policyFile, sharedBudgetPolicy)
	a := startReplica(t, bin, "replica-a", policyFile, certs, redisURL, cp.AdminKubeconfig)
	b := startReplica(t, bin, "replica-b", policyFile, certs, redisURL, cp.AdminKubeconfig)
	const ns = "replicas"
	createNamespace(t, cp, ns, "replicas")
	pods := createPods(t, cp.Client, ns, "web", 24)
	// register points the API server at r and waits until r answers its reviews.
	register := func(r *replica) {
		t.Helper()
		kd(t, bin, "webhook", "config", "--policy", policyFile, "--name", "kd-replicas", "--url", r.webhookURL,
			"--ca-bundle-file", filepath.Join(certs, pki.CACertFile), "--failure-policy", "Fail",
			"--namespace-selector", scenarioLabel+"=replicas", "--apply", "--kubeconfig", cp.AdminKubeconfig)
		reviews := func(ctx context.Context) float64 { // allowed or denied, the breaker may be open
			var sum float64
			for _, result := range []string{"allowed", "denied"} {
				v, _ := scrape(ctx, r.metricsURL+"/metrics", `kubedefender_webhook_requests_total{operation="DELETE",result="`+result+`"}`)
				sum += max(v, 0)
			}
			return sum
		}
		framework.Eventually(t, 30*time.Second, "the API server to call "+r.name, func(ctx context.Context) (bool, error) {
			before := reviews(ctx)
			_ = cp.Client.CoreV1().Pods(ns).Delete(ctx, pods[23], metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
			return reviews(ctx) > before, nil
		})
	}

	// When 10 pods are deleted through replica A and 10 through replica B
	register(a)
	mustDelete(t, cp.Client, ns, pods[:10]...)
	register(b)
	mustDelete(t, cp.Client, ns, pods[10:20]...)

	// Then the 21st is denied by B, and A denies too: one budget, one breaker
	wantDenied(t, deletePod(context.Background(), cp.Client, ns, pods[20]), http.StatusForbidden, "window 1m is exhausted (20/20 used)")
	register(a)
	wantDenied(t, deletePod(context.Background(), cp.Client, ns, pods[21]), http.StatusForbidden, "the breaker is Open")
	if n := countPods(t, cp.Client, ns); n != 4 {
		t.Errorf("%d pods left, want 4", n)
	}
	for _, r := range []*replica{a, b} {
		v, err := scrape(context.Background(), r.metricsURL+"/metrics", `kubedefender_limiter_decisions_total{front="webhook",kind="budget",result="denied",rule="pod-deletes"}`)
		t.Logf("%s denied %v deletes (dry-run canaries included)", r.name, v)
		if err != nil || v < 1 {
			t.Errorf("%s: denied = %v (%v), want at least 1", r.name, v, err)
		}
	}
}
