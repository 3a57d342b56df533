package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/limiter"
)

// budgetPolicy is a one-budget policy on pod deletes per namespace.
func budgetPolicy(name, extra string, limit int, window string) string {
	return fmt.Sprintf(`apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: %s}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete, deletecollection, evict], resources: [pods]}
    per: [namespace]
    windows: [{window: %s, limit: %d}]
%s`, name, window, limit, extra)
}

const manualBreaker = "    breaker: {recovery: Manual}\n"

// TestWebhook runs the admission webhook scenarios against one real control
// plane (etcd, kube-apiserver, kube-controller-manager). Each scenario runs
// its own webhook in this process, registered for its own labelled
// namespaces, so scenarios run in parallel without seeing each other.
func TestWebhook(t *testing.T) {
	began := time.Now()
	cp := framework.Start(t, framework.Options{ControllerManager: true})
	t.Logf("control plane up in %s", time.Since(began).Round(time.Millisecond))

	runScenarios(t, cp, []namedScenario{
		{"twenty deletes pass, the twenty-first is denied and a Manual breaker keeps denying", manualBreakerScenario},
		{"an Auto breaker half-opens after its cooldown and closes again", autoBreakerScenario},
		{"kubectl delete pods --all deletes exactly the budget and touches nothing else", deleteAllScenario},
		{"a deletecollection is judged item by item", deleteCollectionScenario},
		{"budgets per namespace keep namespaces apart", perNamespaceScenario},
		{"server-side dry runs are judged but take nothing", dryRunScenario},
		{"evictions count against the pod budget", evictionScenario},
		{"excluded users are not charged", excludedUserScenario},
		{"a namespace deletion cascades through the excluded controllers", namespaceCascadeScenario},
		{"shadow mode never denies and reports what it would have denied", shadowScenario},
		{"a policy edit on disk applies without restart and a broken edit is refused", policyReloadScenario},
		{"a dead webhook is ruled by failurePolicy", failurePolicyScenario},
		{"a store that does not answer is cut off by the deadline and the local fallback decides", stuckStoreScenario},
		{"a store that hangs past its deadline never makes the API server wait", hungStoreScenario},
		{"the kubedefender binary serves the webhook it configured and its break-glass command reopens the breaker", binaryScenario},
	})
}

func manualBreakerScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a budget of 20 pod deletes per minute per namespace with a Manual breaker
	d := startDefenderFor(t, cp, "manual", budgetPolicy("manual", manualBreaker, 20, "1m"), defenderOptions{FakeClock: true})
	const ns = "manual"
	pods := createPods(t, cp.Client, ns, "web", 23)

	// When 20 pods are deleted within the minute
	mustDelete(t, cp.Client, ns, pods[:20]...)

	// Then the 21st is denied with a message that says what to do
	err := deletePod(context.Background(), cp.Client, ns, pods[20])
	wantDenied(t, err, 403, `budget "pod-deletes" (key namespace=manual)`, "window 1m is exhausted (20/20 used)",
		"recovery is Manual", "kubedefender breakglass grant --budget pod-deletes --namespace manual --for 30m")

	// When the minute is over
	d.Clock.Step(2 * time.Minute)

	// Then the breaker still denies, through client-go and kubectl alike
	err = deletePod(context.Background(), cp.Client, ns, pods[21])
	wantDenied(t, err, 403, "the breaker is Open since")
	_, stderr, kerr := cp.Kubectl(t, cp.AdminKubeconfig, "delete", "pod", "-n", ns, pods[22], "--wait=false")
	if kerr == nil || !strings.Contains(stderr, `Error from server (Forbidden): admission webhook "budgets.kubedefender.io" denied the request: kubedefender: budget "pod-deletes"`) {
		t.Errorf("kubectl delete: err=%v stderr=%q, want the Forbidden denial", kerr, stderr)
	}
	if n := countPods(t, cp.Client, ns); n != 3 {
		t.Errorf("%d pods left, want 3", n)
	}
}

func autoBreakerScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given 5 deletes per 30s with an Auto breaker: cooldown 1m, 2 probes while HalfOpen
	auto := "    breaker: {recovery: Auto, cooldown: 1m, halfOpenLimit: 2}\n"
	d := startDefenderFor(t, cp, "auto", budgetPolicy("auto", auto, 5, "30s"), defenderOptions{FakeClock: true})
	const ns = "auto"
	pods := createPods(t, cp.Client, ns, "job", 12)
	ctx := context.Background()

	// When the budget is exhausted
	mustDelete(t, cp.Client, ns, pods[:5]...)
	err := deletePod(ctx, cp.Client, ns, pods[5])

	// Then the breaker opens with a 429 that says when to retry (Retry-After)
	wantDenied(t, err, 429, "The breaker tripped and is now Open", "recovery is Auto: retry after 1m0s")
	if s, ok := apierrors.SuggestsClientDelay(err); !ok || s != 60 {
		t.Errorf("retry after = %d (ok %v), want 60 seconds", s, ok)
	}
	// And it keeps denying during the cooldown
	d.Clock.Step(30 * time.Second)
	wantDenied(t, deletePod(ctx, cp.Client, ns, pods[5]), 429, "the breaker is Open since")

	// When the cooldown passes, the breaker is HalfOpen: 2 probes pass, the 3rd is denied
	d.Clock.Step(31 * time.Second)
	mustDelete(t, cp.Client, ns, pods[5], pods[6])
	wantDenied(t, deletePod(ctx, cp.Client, ns, pods[7]), 429, "the breaker is HalfOpen since", "has admitted its 2 probe requests")

	// When a further cooldown passes without exhaustion, the breaker is Closed again
	d.Clock.Step(61 * time.Second)
	mustDelete(t, cp.Client, ns, pods[7:12]...)
	if n := countPods(t, cp.Client, ns); n != 0 {
		t.Errorf("%d pods left, want 0", n)
	}
}

func deleteAllScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a namespace with 15 pods, a bystander namespace with 3, and a budget of 10 with a Manual breaker
	startDefenderFor(t, cp, "delete-all", budgetPolicy("delete-all", manualBreaker, 10, "1m"), defenderOptions{FakeClock: true})
	const ns, bystander = "delete-all", "delete-all-bystander"
	createNamespace(t, cp, bystander, "delete-all")
	createPods(t, cp.Client, ns, "web", 15)
	createPods(t, cp.Client, bystander, "db", 3)

	// When someone runs kubectl delete pods --all
	// Then exactly 10 are deleted, kubectl reports the denials, and the bystanders are untouched
	_, _, err := kubectlDeleteAllPods(t, cp, ns, 10, 5, "window 1m is exhausted (10/10 used)", "kubedefender breakglass grant")
	if err == nil {
		t.Errorf("kubectl delete --all succeeded, want it to fail on the denied pods")
	}
	if n := countPods(t, cp.Client, bystander); n != 3 {
		t.Errorf("%d pods left in %s, want 3", n, bystander)
	}
}

func deleteCollectionScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given 12 pods and a budget of 4 with a Manual breaker
	startDefenderFor(t, cp, "collection", budgetPolicy("collection", manualBreaker, 4, "1m"), defenderOptions{FakeClock: true})
	const ns = "collection"
	createPods(t, cp.Client, ns, "web", 12)

	// When client-go deletes the whole collection in one request
	err := cp.Client.CoreV1().Pods(ns).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{})

	// Then the request fails, 4 items were deleted and 8 remain
	wantDenied(t, err, 403, `budget "pod-deletes"`)
	if n := countPods(t, cp.Client, ns); n != 8 {
		t.Errorf("%d pods left, want 8", n)
	}
}

func perNamespaceScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given two namespaces and a budget of 3 per namespace
	d := startDefender(t, "per-ns", budgetPolicy("per-ns", manualBreaker, 3, "1m"), defenderOptions{FakeClock: true})
	d.register(t, cp, "per-ns", admissionregistrationv1.Fail)
	createNamespace(t, cp, "per-ns-a", "per-ns")
	createNamespace(t, cp, "per-ns-b", "per-ns")
	a := createPods(t, cp.Client, "per-ns-a", "web", 4)
	b := createPods(t, cp.Client, "per-ns-b", "web", 3)

	// When ns-a exhausts its budget
	mustDelete(t, cp.Client, "per-ns-a", a[:3]...)
	wantDenied(t, deletePod(context.Background(), cp.Client, "per-ns-a", a[3]), 403, "key namespace=per-ns-a")

	// Then ns-b still has all of its own
	mustDelete(t, cp.Client, "per-ns-b", b...)
}

func dryRunScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a budget of 3 and 4 pods
	startDefenderFor(t, cp, "dry-run", budgetPolicy("dry-run", manualBreaker, 3, "1m"), defenderOptions{FakeClock: true})
	const ns = "dry-run"
	pods := createPods(t, cp.Client, ns, "web", 4)

	// When kubectl dry-runs deleting all 4, three times over
	for range 3 {
		stdout, stderr, err := cp.Kubectl(t, cp.AdminKubeconfig, append([]string{"delete", "pods", "-n", ns, "--dry-run=server"}, pods...)...)
		if err != nil || strings.Count(stdout, "(server dry run)") != 4 {
			t.Fatalf("kubectl --dry-run=server: err=%v stdout=%q stderr=%q", err, stdout, stderr)
		}
	}

	// Then the webhook judged them and the budget is intact: 3 real deletes pass, the 4th is denied
	mustDelete(t, cp.Client, ns, pods[:3]...)
	wantDenied(t, deletePod(context.Background(), cp.Client, ns, pods[3]), 403, "(3/3 used)")
}

func evictionScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a budget of 3 on deletes and evictions, and 5 pods
	startDefenderFor(t, cp, "evict", budgetPolicy("evict", manualBreaker, 3, "1m"), defenderOptions{FakeClock: true})
	const ns = "evict"
	pods := createPods(t, cp.Client, ns, "web", 5)
	evict := func(name string) error {
		return cp.Client.PolicyV1().Evictions(ns).Evict(context.Background(), &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}})
	}

	// When 2 pods are evicted and 1 deleted
	for _, p := range pods[:2] {
		if err := evict(p); err != nil {
			t.Fatalf("failed to evict %s: %v", p, err)
		}
	}
	mustDelete(t, cp.Client, ns, pods[2])

	// Then the next eviction is denied by the same budget
	wantDenied(t, evict(pods[3]), 403, "denied evict of pods", "(3/3 used)")
	if n := countPods(t, cp.Client, ns); n != 2 {
		t.Errorf("%d pods left, want 2", n)
	}
}

func excludedUserScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a budget of 2 that excludes alice, who may delete pods
	extra := manualBreaker + "    exclude: {users: [alice]}\n"
	startDefenderFor(t, cp, "exclude", budgetPolicy("exclude", extra, 2, "1m"), defenderOptions{FakeClock: true})
	const ns = "exclude"
	grantPodDelete(t, cp, ns, framework.UserAlice)
	pods := createPods(t, cp.Client, ns, "web", 7)
	alice := framework.ClientFor(t, cp.TokenConfig(t, framework.UserAlice))

	// When alice deletes 4 pods, twice the budget
	mustDelete(t, alice, ns, pods[:4]...)

	// Then none was charged: the admin still has the whole budget of 2
	mustDelete(t, cp.Client, ns, pods[4:6]...)
	wantDenied(t, deletePod(context.Background(), cp.Client, ns, pods[6]), 403, "(2/2 used)")
}

// grantPodDelete lets user get, list and delete pods in ns.
func grantPodDelete(t *testing.T, cp *framework.ControlPlane, ns, user string) {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pod-deleter"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "delete"}}}}
	if _, err := cp.Client.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("failed to create role: %v", err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pod-deleter-" + user},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pod-deleter"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}}
	if _, err := cp.Client.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatalf("failed to create role binding: %v", err)
	}
}

func namespaceCascadeScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given the cascade policy (e2e/testdata/cascade.yaml): 5 pod deletes per
	// namespace, 1 namespace delete per 10 minutes cluster-wide, the garbage
	// collector and the namespace controller excluded
	data, err := os.ReadFile("testdata/cascade.yaml")
	if err != nil {
		t.Fatalf("failed to read the policy: %v", err)
	}
	d := startDefender(t, "cascade", string(data), defenderOptions{FakeClock: true})
	d.register(t, cp, "cascade", admissionregistrationv1.Fail)
	createNamespace(t, cp, "cascade-doomed", "cascade")
	createNamespace(t, cp, "cascade-kept", "cascade")
	createPods(t, cp.Client, "cascade-doomed", "web", 12)
	createPods(t, cp.Client, "cascade-kept", "web", 2)
	ctx := context.Background()

	// When a namespace with more pods than the pod budget is deleted
	if err := cp.Client.CoreV1().Namespaces().Delete(ctx, "cascade-doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("failed to delete namespace: %v", err)
	}

	// Then the namespace controller removes all 12 pods uncharged and the namespace goes
	framework.Eventually(t, 60*time.Second, "namespace cascade-doomed to be gone", func(ctx context.Context) (bool, error) {
		_, err := cp.Client.CoreV1().Namespaces().Get(ctx, "cascade-doomed", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if got := counter(t, d.Registry, "kubedefender_limiter_decisions_total", map[string]string{"rule": "pod-deletes", "result": "denied"}); got != 0 {
		t.Errorf("pod-deletes denied %v requests during the cascade, want 0", got)
	}

	// And a second namespace deletion within the window is denied
	err = cp.Client.CoreV1().Namespaces().Delete(ctx, "cascade-kept", metav1.DeleteOptions{})
	wantDenied(t, err, 403, `budget "namespace-deletes" (key cluster-wide)`)
	if n := countPods(t, cp.Client, "cascade-kept"); n != 2 {
		t.Errorf("%d pods left in cascade-kept, want 2", n)
	}
}

func shadowScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a Shadow budget of 2
	d := startDefenderFor(t, cp, "shadow", strings.Replace(budgetPolicy("shadow", "", 2, "1m"), "  - name: pod-deletes\n", "  - name: pod-deletes\n    mode: Shadow\n", 1), defenderOptions{FakeClock: true})
	const ns = "shadow"
	pods := createPods(t, cp.Client, ns, "web", 5)
	w := &warnings{}
	cfg := *cp.Config
	cfg.WarningHandler = w
	c := framework.ClientFor(t, &cfg)

	// When 3 pods are deleted with client-go and 2 with kubectl
	mustDelete(t, c, ns, pods[:3]...)
	_, stderr, err := cp.Kubectl(t, cp.AdminKubeconfig, "delete", "pods", "-n", ns, pods[3], pods[4], "--wait=false")

	// Then every delete passes, each one over the budget carries a warning, and the metrics count them
	if err != nil {
		t.Fatalf("kubectl delete: %v: %s", err, stderr)
	}
	if n := countPods(t, cp.Client, ns); n != 0 {
		t.Errorf("%d pods left, want 0", n)
	}
	got := w.all()
	if len(got) != 1 || !strings.Contains(got[0], `kubedefender: shadow budget "pod-deletes" (key namespace=shadow) would have denied this delete`) {
		t.Errorf("client-go warnings = %q, want one shadow warning (the 3rd delete)", got)
	}
	// (kubectl prints identical warnings once)
	if !strings.Contains(stderr, `Warning: kubedefender: shadow budget "pod-deletes" (key namespace=shadow) would have denied this delete`) {
		t.Errorf("kubectl did not print the shadow warning:\n%s", stderr)
	}
	if got := counter(t, d.Registry, "kubedefender_webhook_requests_total", map[string]string{"operation": "DELETE", "result": "shadow"}); got != 3 {
		t.Errorf("requests_total{result=shadow} = %v, want 3", got)
	}
}

func policyReloadScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a watched policy with a budget of 2
	d := startDefenderFor(t, cp, "reload", budgetPolicy("reload", manualBreaker, 2, "1m"), defenderOptions{FakeClock: true, Watch: true})
	const ns = "reload"
	pods := createPods(t, cp.Client, ns, "web", 9)
	mustDelete(t, cp.Client, ns, pods[:2]...)
	wantDenied(t, deletePod(context.Background(), cp.Client, ns, pods[2]), 403, "(2/2 used)")

	// When the file is edited to a budget of 5
	old := d.Watcher.Current().Hash
	writePolicy(t, d.PolicyFile, budgetPolicy("reload", manualBreaker, 5, "1m"))
	framework.Eventually(t, 10*time.Second, "the new policy to load", func(context.Context) (bool, error) {
		return d.Watcher.Current().Hash != old, nil
	})

	// Then the counts start afresh, but the Manual breaker the denial opened
	// stays Open (only an override closes it); once reset, the new budget applies
	wantDenied(t, deletePod(context.Background(), cp.Client, ns, pods[2]), 403, "the breaker is Open", "1m: 0/5")
	if err := d.Engine.ResetBreakers(context.Background(), &limiter.Override{Name: "reset", Budgets: []string{"pod-deletes"}, Namespaces: []string{ns}, ResetBreaker: true}); err != nil {
		t.Fatal(err)
	}
	mustDelete(t, cp.Client, ns, pods[2:5]...)

	// When a broken edit is written
	writePolicy(t, d.PolicyFile, strings.Replace(budgetPolicy("reload", manualBreaker, 5, "1m"), "limit: 5", "limit: 0", 1))
	framework.Eventually(t, 10*time.Second, "the broken edit to be refused", func(context.Context) (bool, error) {
		return strings.Contains(d.Watcher.LastError(), "limit: Invalid value: 0"), nil
	})

	// Then the running policy keeps working: 2 more pass, the 6th is denied
	mustDelete(t, cp.Client, ns, pods[5:7]...)
	wantDenied(t, deletePod(context.Background(), cp.Client, ns, pods[7]), 403, "(5/5 used)")
}

func writePolicy(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatalf("failed to write policy: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatalf("failed to replace policy: %v", err)
	}
}

func failurePolicyScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given one webhook registered twice: with failurePolicy Fail for one
	// namespace and Ignore for another
	d := startDefender(t, "dead", budgetPolicy("dead", manualBreaker, 100, "1m"), defenderOptions{})
	d.register(t, cp, "dead-fail", admissionregistrationv1.Fail)
	d.register(t, cp, "dead-ignore", admissionregistrationv1.Ignore)
	createNamespace(t, cp, "dead-fail", "dead-fail")
	createNamespace(t, cp, "dead-ignore", "dead-ignore")
	failPods := createPods(t, cp.Client, "dead-fail", "web", 1)
	ignorePods := createPods(t, cp.Client, "dead-ignore", "web", 1)

	// When the webhook is killed
	d.Stop()

	// Then Fail denies the delete, naming the webhook that could not be called
	err := deletePod(context.Background(), cp.Client, "dead-fail", failPods[0])
	if err == nil || !strings.Contains(err.Error(), `failed calling webhook "budgets.kubedefender.io"`) {
		t.Errorf("delete under Fail: err=%v, want a failed webhook call", err)
	}
	if n := countPods(t, cp.Client, "dead-fail"); n != 1 {
		t.Errorf("%d pods left under Fail, want 1", n)
	}
	// And Ignore lets it through
	if err := deletePod(context.Background(), cp.Client, "dead-ignore", ignorePods[0]); err != nil {
		t.Errorf("delete under Ignore: %v, want it admitted", err)
	}
}
