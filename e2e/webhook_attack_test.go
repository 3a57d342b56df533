package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kubedefender/kubedefender/e2e/framework"
)

// TestWebhookAttacks replays, against the real kube-apiserver, the ways a
// review found to get past the webhook's budgets, each now closed.
func TestWebhookAttacks(t *testing.T) {
	cp := framework.Start(t, framework.Options{})
	runScenarios(t, cp, []namedScenario{
		{"a server-side dry-run drain (dryRun in the Eviction's deleteOptions) takes nothing from the budget", dryRunDrainScenario},
		{"an open Manual breaker denies the eviction of a pod recreated under the name of a pod just evicted", recreatedPodEvictionScenario},
		{"kubectl scale --replicas=0 is judged by a budget on deployment updates", scaleToZeroScenario},
	})
}

// evictOnce posts one policy/v1 Eviction of pod ns/name with opts.
func evictOnce(cp *framework.ControlPlane, ns, name string, opts *metav1.DeleteOptions) error {
	return cp.Client.PolicyV1().Evictions(ns).Evict(context.Background(), &policyv1.Eviction{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, DeleteOptions: opts})
}

// The API server sends a pods/eviction CREATE whose request dryRun comes
// from the CreateOptions (false), while the eviction REST only dry-runs the
// delete the Eviction's deleteOptions.dryRun asks for: kubectl drain
// --dry-run=server sends exactly this.
func dryRunDrainScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a budget of 1 pod eviction and 2 pods
	startDefenderFor(t, cp, "wa-drain", budgetPolicy("wa-drain", manualBreaker, 1, "1h"), defenderOptions{FakeClock: true})
	const ns = "wa-drain"
	pods := createPods(t, cp.Client, ns, "web", 2)
	// When pod web-0 is evicted twice in a server-side dry run
	for range 2 {
		if err := evictOnce(cp, ns, pods[0], &metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Fatalf("dry-run eviction: %v", err)
		}
	}
	// Then the pod is still there (the API server only pretended)
	if _, err := cp.Client.CoreV1().Pods(ns).Get(context.Background(), pods[0], metav1.GetOptions{}); err != nil {
		t.Fatalf("pod after dry-run evictions: %v", err)
	}
	// And the budget is intact: a real eviction passes, and the next is denied
	if err := evictOnce(cp, ns, pods[1], nil); err != nil {
		t.Errorf("a real eviction after two dry-run evictions: %v, want it admitted (dry runs take nothing)", err)
	}
	wantDenied(t, evictOnce(cp, ns, pods[0], nil), 403, `budget "pod-deletes"`)
}

// The webhook's charge-once key of an eviction names the pod (the review
// carries no pod UID): a StatefulSet recreates a pod under the same name in
// seconds, and within the charge-once period its eviction is a repeat. A
// repeat is not charged again, but an open breaker still denies it.
func recreatedPodEvictionScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a budget of 1 eviction with a Manual breaker, and pods web-0 and web-1
	startDefenderFor(t, cp, "wa-repeat", budgetPolicy("wa-repeat", manualBreaker, 1, "1h"), defenderOptions{FakeClock: true})
	const ns = "wa-repeat"
	pods := createPods(t, cp.Client, ns, "web", 2)
	// When web-0 is evicted (the budget is spent) and web-1's eviction opens the breaker
	if err := evictOnce(cp, ns, pods[0], nil); err != nil {
		t.Fatalf("first eviction: %v", err)
	}
	wantDenied(t, evictOnce(cp, ns, pods[1], nil), 403)
	// And web-0 comes back under the same name (as a StatefulSet recreates it)
	framework.Eventually(t, 10*time.Second, "web-0 to be gone", func(ctx context.Context) (bool, error) {
		_, err := cp.Client.CoreV1().Pods(ns).Get(ctx, pods[0], metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pods[0]}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}, TerminationGracePeriodSeconds: ptr.To[int64](0)}}
	if _, err := cp.Client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("recreate web-0: %v", err)
	}
	// Then evicting the new web-0 is denied by the open breaker, and it stays
	wantDenied(t, evictOnce(cp, ns, pods[0], nil), 403, `budget "pod-deletes"`)
	if _, err := cp.Client.CoreV1().Pods(ns).Get(context.Background(), pods[0], metav1.GetOptions{}); err != nil {
		t.Errorf("the recreated web-0 after its denied eviction: %v", err)
	}
}

// kubectl scale PATCHes deployments/scale: the generated configuration sends
// those updates, and the webhook judges them as deployment updates.
func scaleToZeroScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a budget of 1 deployment update per namespace
	d := startDefender(t, "wa-scale", `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: wa-scale}
spec:
  budgets:
  - name: deploy-updates
    match: {verbs: [update], resources: [apps/deployments]}
    per: [namespace]
    windows: [{window: 1h, limit: 1}]
    breaker: {recovery: Manual}
  - name: canary
    match: {verbs: [delete], resources: [pods]}
    windows: [{window: 1h, limit: 1000}]
`, defenderOptions{FakeClock: true})
	d.register(t, cp, "wa-scale", admissionregistrationv1.Fail)
	const ns = "wa-scale"
	createNamespace(t, cp, ns, "wa-scale")
	// And three deployments of 3 replicas
	names := []string{"a", "b", "c"}
	for _, name := range names {
		out, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, "-n", ns, "create", "deployment", name, "--image=registry.invalid/app:1", "--replicas=3")
		if err != nil {
			t.Fatalf("create deployment %s: %v: %s%s", name, err, out, errOut)
		}
	}
	// When each is scaled to zero with kubectl scale
	var passed []string
	var denial string
	for _, name := range names {
		_, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, "-n", ns, "scale", "deployment", name, "--replicas=0")
		if err == nil {
			passed = append(passed, name)
		} else {
			denial = errOut
		}
	}
	// Then only the first passes, and the others are denied by the budget
	if len(passed) != 1 || passed[0] != "a" {
		t.Fatalf("scaled to zero: %v, want only a (a budget of 1 deployment update)", passed)
	}
	for _, want := range []string{`admission webhook "budgets.kubedefender.io" denied the request`, `budget "deploy-updates"`} {
		if !strings.Contains(denial, want) {
			t.Errorf("kubectl scale failed with %q, want the budget's denial (%q)", denial, want)
		}
	}
	for _, name := range names[1:] {
		dep, err := cp.Client.AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := ptr.Deref(dep.Spec.Replicas, -1); got != 3 {
			t.Errorf("deployment %s has %d replicas after a denied scale, want 3", name, got)
		}
	}
}
