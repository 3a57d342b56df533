package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kubedefender/kubedefender/cascade"
	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/pki"
)

// atRootPolicy is 20 pod removals per minute per namespace, charged at the
// root of a cascade. The breaker is Manual so that a denial is a 403: kubectl
// retries a 429 with Retry-After for up to a minute before it gives up.
const atRootPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: blast-radius}
spec:
  budgets:
  - name: pods-down
    match: {verbs: [delete, deletecollection, evict], resources: [pods]}
    per: [namespace]
    cascades: AtRoot
    windows: [{window: 1m, limit: 20}]
    breaker: {recovery: Manual}
`

// TestBlastRadius runs the AtRoot budget scenarios (issue 11) against the
// real API server and kube-controller-manager (no kubelet: pods stay
// Pending, and unbound pods go at once when deleted).
func TestBlastRadius(t *testing.T) {
	cp := framework.Start(t, framework.Options{ControllerManager: true})
	runScenarios(t, cp, []namedScenario{
		{"a namespace delete over the budget is denied whole and leaves every pod", bigNamespaceScenario},
		{"a namespace delete within the budget is charged its pods once and the controller's deletes are free", smallNamespaceScenario},
		{"a scale-down is charged old minus new, a delete of the rest is denied, an orphaning delete is not", scaleDownScenario},
		{"a node delete is charged its bound pods in their namespaces and a NoExecute taint over the budget is denied", nodeScenario},
	})
}

// startAtRootDefender starts a defender for atRootPolicy with a cascade
// counter on cp, synced before it returns, and registers it for scenario.
func startAtRootDefender(t *testing.T, cp *framework.ControlPlane, scenario string) (*defender, *cascade.Counter) {
	t.Helper()
	ctr, err := cascade.New(cascade.Config{Client: cp.Client})
	if err != nil {
		t.Fatalf("%v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ctr.Start(ctx)
	framework.Eventually(t, 30*time.Second, "the cascade counter to sync", func(context.Context) (bool, error) { return ctr.HasSynced(), nil })
	d := startDefender(t, scenario, atRootPolicy, defenderOptions{FakeClock: true, Cascades: ctr})
	d.register(t, cp, scenario, admissionregistrationv1.Fail)
	return d, ctr
}

// startAtRootWithPods is how the namespace scenarios begin: an AtRoot
// defender for scenario ns, namespace ns in it holding n pods web-0 …, and
// both the API server and the counter seeing all n.
func startAtRootWithPods(t *testing.T, cp *framework.ControlPlane, ns string, n int) *defender {
	t.Helper()
	d, ctr := startAtRootDefender(t, cp, ns)
	createNamespace(t, cp, ns, ns)
	createPods(t, cp.Client, ns, "web", n)
	waitCounted(t, ctr, cp, ns, n)
	return d
}

// used is what the pods-down budget used in its 1m window for namespace ns.
func used(t *testing.T, d *defender, ns string) int64 {
	t.Helper()
	st := d.Engine.Status(context.Background(), 1000)
	for _, b := range st.Budgets {
		if b.Name != "pods-down" {
			continue
		}
		for _, k := range b.Keys {
			if k.Key == "namespace="+ns {
				for _, w := range k.Windows {
					if w.Window == "1m" || w.Window == "1m0s" {
						return w.Used
					}
				}
			}
		}
	}
	return 0
}

// waitPods waits until the counter and the API server agree ns holds n live pods.
func waitPods(t *testing.T, c kubernetes.Interface, ns string, n int) {
	t.Helper()
	framework.Eventually(t, 60*time.Second, fmt.Sprintf("%d pods in %s", n, ns), func(ctx context.Context) (bool, error) {
		l, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		live := 0
		for _, p := range l.Items {
			if p.DeletionTimestamp == nil {
				live++
			}
		}
		return live == n, nil
	})
}

func bigNamespaceScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a 30-pod namespace under a 20/1m AtRoot budget
	const ns = "br-big"
	d := startAtRootWithPods(t, cp, ns, 30)

	// When the namespace is deleted with kubectl
	_, stderr, err := cp.Kubectl(t, cp.AdminKubeconfig, "delete", "namespace", ns, "--wait=false")

	// Then it is denied with the count
	if err == nil || !strings.Contains(stderr, `admission webhook "budgets.kubedefender.io" denied the request`) || !strings.Contains(stderr, "30") {
		t.Fatalf("kubectl delete namespace: err=%v stderr=%q, want a denial naming 30 pods", err, stderr)
	}
	// And the namespace and its 30 pods are intact, none Terminating
	got, err := cp.Client.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.DeletionTimestamp != nil || got.Status.Phase != corev1.NamespaceActive {
		t.Errorf("namespace %s is %s (deletionTimestamp %v), want Active", ns, got.Status.Phase, got.DeletionTimestamp)
	}
	waitPods(t, cp.Client, ns, 30)
	if u := used(t, d, ns); u != 0 {
		t.Errorf("pods-down used %d for the denied delete, want 0", u)
	}
}

// waitCounted waits until the API server and the counter (through its
// watch) both hold n live pods in ns.
func waitCounted(t *testing.T, ctr *cascade.Counter, cp *framework.ControlPlane, ns string, n int) {
	t.Helper()
	waitPods(t, cp.Client, ns, n)
	framework.Eventually(t, 30*time.Second, fmt.Sprintf("the counter to see %d pods in %s", n, ns), func(context.Context) (bool, error) {
		return ctr.PodsInNamespace(ns) == n, nil
	})
}

func smallNamespaceScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a 12-pod namespace under a 20/1m AtRoot budget
	const ns = "br-small"
	d := startAtRootWithPods(t, cp, ns, 12)

	// When the namespace is deleted
	if _, stderr, err := cp.Kubectl(t, cp.AdminKubeconfig, "delete", "namespace", ns, "--wait=false"); err != nil {
		t.Fatalf("kubectl delete namespace: %v: %s", err, stderr)
	}

	// Then the namespace controller removes it whole
	framework.Eventually(t, 60*time.Second, "namespace "+ns+" to be gone", func(ctx context.Context) (bool, error) {
		_, err := cp.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	// And the budget was charged 12 for the root, not 24: the 12 pod
	// deletes that followed were free, counted as cascade
	if u := used(t, d, ns); u != 12 {
		t.Errorf("pods-down used %d, want 12", u)
	}
	if n := counter(t, d.Registry, "kubedefender_webhook_requests_total", map[string]string{"operation": "DELETE", "result": "cascade"}); n < 12 {
		t.Errorf("%v pod deletes counted as cascade, want at least 12", n)
	}
}

func scaleDownScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a Deployment of 30 replicas under a 20/1m AtRoot budget
	const ns = "br-scale"
	d, ctr := startAtRootDefender(t, cp, "br-scale")
	createNamespace(t, cp, ns, "br-scale")
	createWebDeployment(t, cp.Client, ns, 30)
	waitCounted(t, ctr, cp, ns, 30)

	// When it is scaled 30 → 25
	updates := map[string]string{"operation": "UPDATE", "result": "allowed"}
	before := int64(counter(t, d.Registry, "kubedefender_webhook_requests_total", updates))
	if _, stderr, err := cp.Kubectl(t, cp.AdminKubeconfig, "scale", "-n", ns, "deployment/web", "--replicas=25"); err != nil {
		t.Fatalf("kubectl scale 30→25: %v: %s", err, stderr)
	}
	// Then it is charged 5, and the ReplicaSet controller's 5 pod deletes are
	// free. (The API server validates an update again when its write
	// conflicts — here with the Deployment controller's status writes: the
	// retry is a new review, charged again, so a scale that conflicted costs
	// 5 per validation; docs/blast-radius.md.)
	waitPods(t, cp.Client, ns, 25)
	scales := int64(counter(t, d.Registry, "kubedefender_webhook_requests_total", updates)) - before // the ReplicaSet's scale is a free follow-up (cascade)
	charged := used(t, d, ns)
	if scales < 1 || scales > 2 || charged != 5*scales {
		t.Errorf("pods-down used %d after 30→25 validated %d times, want 5 per validation (one, or two when the write conflicted)", charged, scales)
	}

	// When it is scaled 25 → 0 (25 pods, 15 left)
	_, stderr, err := cp.Kubectl(t, cp.AdminKubeconfig, "scale", "-n", ns, "deployment/web", "--replicas=0")
	// Then it is denied and nothing changes
	if err == nil || !strings.Contains(stderr, "denied the request") {
		t.Fatalf("kubectl scale 25→0: err=%v stderr=%q, want a denial", err, stderr)
	}
	// And a delete of the Deployment (its 25 pods) is denied
	_, stderr, err = cp.Kubectl(t, cp.AdminKubeconfig, "delete", "-n", ns, "deployment/web", "--wait=false")
	if err == nil || !strings.Contains(stderr, "denied the request") {
		t.Fatalf("kubectl delete deployment: err=%v stderr=%q, want a denial", err, stderr)
	}
	// And with --cascade=orphan (no pod removed) it is admitted and the pods stay
	if _, stderr, err := cp.Kubectl(t, cp.AdminKubeconfig, "delete", "-n", ns, "deployment/web", "--cascade=orphan", "--wait=false"); err != nil {
		t.Fatalf("kubectl delete deployment --cascade=orphan: %v: %s", err, stderr)
	}
	framework.Eventually(t, 30*time.Second, "the deployment to be gone", func(ctx context.Context) (bool, error) {
		_, err := cp.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	waitPods(t, cp.Client, ns, 25)
	if u := used(t, d, ns); u != charged {
		t.Errorf("pods-down used %d at the end, want the scale's %d", u, charged)
	}
}

func nodeScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a node with 10 bound pods, 5 in each of two namespaces, and a
	// node with 25 bound pods in a third
	d, ctr := startAtRootDefender(t, cp, "br-node")
	ctx := context.Background()
	bind := func(node, ns string, n int) {
		if _, err := cp.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			if _, err := cp.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
				t.Fatalf("failed to create node %s: %v", node, err)
			}
		}
		createNamespace(t, cp, ns, "br-node")
		for i := range n {
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bound-%d", i)},
				Spec: corev1.PodSpec{NodeName: node,
					Containers:                    []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
					TerminationGracePeriodSeconds: ptr.To[int64](0)},
			}
			if _, err := cp.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatalf("failed to create pod %s/%s: %v", ns, p.Name, err)
			}
		}
		waitCounted(t, ctr, cp, ns, n)
	}
	bind("br-node-1", "br-node-a", 5)
	bind("br-node-1", "br-node-b", 5)
	bind("br-node-2", "br-node-c", 25)

	// When the first node is deleted
	if err := cp.Client.CoreV1().Nodes().Delete(ctx, "br-node-1", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("failed to delete node br-node-1: %v", err)
	}
	// Then it is charged its 10 pods, 5 in each namespace
	for _, ns := range []string{"br-node-a", "br-node-b"} {
		if u := used(t, d, ns); u != 5 {
			t.Errorf("pods-down used %d in %s, want 5", u, ns)
		}
	}

	// When a NoExecute taint is added to the second node (25 pods, 20 allowed)
	patch := `{"spec":{"taints":[{"key":"example.com/broken","effect":"NoExecute"}]}}`
	_, err := cp.Client.CoreV1().Nodes().Patch(ctx, "br-node-2", types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	// Then it is denied and the node does not carry the taint
	wantDenied(t, err, 403, "pods-down")
	n, err := cp.Client.CoreV1().Nodes().Get(ctx, "br-node-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, taint := range n.Spec.Taints {
		if taint.Key == "example.com/broken" {
			t.Errorf("node br-node-2 carries the denied taint: %v", n.Spec.Taints)
		}
	}
	if u := used(t, d, "br-node-c"); u != 0 {
		t.Errorf("pods-down used %d in br-node-c, want 0", u)
	}
}

// TestBlastRadiusServe runs `kubedefender serve` with an AtRoot budget from
// its kubeconfig: /readyz waits for the cascade counts, a namespace delete
// over the budget is denied whole, and after a break-glass grant it goes
// through completely.
func TestBlastRadiusServe(t *testing.T) {
	cp := framework.Start(t, framework.Options{ControllerManager: true})
	applyBase(t, cp, "namespace.yaml", "crd-override.yaml")
	waitOverridesServed(t, cp)
	// Given a 30-pod namespace
	const ns = "br-serve"
	createNamespace(t, cp, ns, "br-serve")
	createPods(t, cp.Client, ns, "web", 30)

	// And kubedefender serve with a 20/1m AtRoot budget, its webhook applied
	bin := buildKubedefender(t)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	kd(t, bin, "certs", "generate", "--ip", "127.0.0.1", "--dns", "localhost", "--out-dir", certs)
	policyFile := filepath.Join(dir, "policy.yaml")
	writePolicy(t, policyFile, atRootPolicy)
	r := startReplica(t, bin, "br-serve", policyFile, certs, "", cp.AdminKubeconfig)
	// Then /readyz says ready once the cascade counts have synced
	framework.Eventually(t, 30*time.Second, "/readyz to be ready", func(ctx context.Context) (bool, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.metricsURL+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_ = resp.Body.Close()
		}
		// Not listening yet is not ready yet.
		return err == nil && resp.StatusCode == http.StatusOK, nil
	})
	kd(t, bin, "webhook", "config", "--policy", policyFile, "--name", "kd-br-serve", "--url", r.webhookURL,
		"--ca-bundle-file", filepath.Join(certs, pki.CACertFile), "--failure-policy", "Fail", "--namespace-selector", scenarioLabel+"=br-serve",
		"--apply", "--kubeconfig", cp.AdminKubeconfig)
	t.Cleanup(func() {
		_ = cp.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(context.Background(), "kd-br-serve", metav1.DeleteOptions{})
	})

	// When the namespace is deleted
	var stderr string
	framework.Eventually(t, 30*time.Second, "the webhook to judge the namespace delete", func(context.Context) (bool, error) {
		_, se, err := cp.Kubectl(t, cp.AdminKubeconfig, "delete", "namespace", ns, "--wait=false")
		if err == nil {
			return false, fmt.Errorf("the namespace delete was admitted: %s", se)
		}
		stderr = se
		return strings.Contains(se, "denied the request"), nil
	})
	// Then it is denied with the count, and nothing is Terminating
	if !strings.Contains(stderr, "30") || !strings.Contains(stderr, "kubedefender breakglass grant --budget pods-down --namespace "+ns) {
		t.Errorf("denial %q does not name the 30 pods and the break-glass command", stderr)
	}
	got, err := cp.Client.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.DeletionTimestamp != nil {
		t.Fatalf("namespace %s is Terminating after the denial", ns)
	}
	waitPods(t, cp.Client, ns, 30)

	// When break-glass is granted for the namespace
	kd(t, bin, "breakglass", "grant", "--budget", "pods-down", "--namespace", ns, "--for", "5m",
		"--reason", "INC-11: decommission", "--kubeconfig", cp.AdminKubeconfig)
	// Then the delete goes through and the namespace goes completely
	framework.Eventually(t, 30*time.Second, "the namespace delete to be admitted", func(context.Context) (bool, error) {
		_, _, err := cp.Kubectl(t, cp.AdminKubeconfig, "delete", "namespace", ns, "--wait=false")
		return err == nil, nil
	})
	framework.Eventually(t, 60*time.Second, "namespace "+ns+" to be gone", func(ctx context.Context) (bool, error) {
		_, err := cp.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}
