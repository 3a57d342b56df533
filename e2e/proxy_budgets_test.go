package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/kubedefender/kubedefender/e2e/framework"
)

// proxyBudgetsPolicy: budgets charged by the proxy (no webhook deployed).
// alice's scenarios each have a budget of their own (per namespace); the
// cluster-wide breaker over every write leaves alice out so that it trips
// only when its scenario trips it.
const proxyBudgetsPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: proxy-budgets-e2e}
spec:
  budgets:
  - name: cm-updates
    match: {verbs: [update], resources: [configmaps], namespaces: [pb-patch]}
    windows: [{window: 1h, limit: 2}]
    breaker: {recovery: Manual}
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods], users: [alice]}
    per: [namespace]
    windows: [{window: 1h, limit: 2}]
    breaker: {recovery: Manual}
  - name: cluster-writes
    match: {verbs: [create, update, delete], resources: ["*"]}
    exclude: {users: [alice]}
    windows: [{window: 1h, limit: 1}]
    breaker: {recovery: Manual}
`

// TestProxyBudgets runs `kubedefender serve --budgets-at=proxy` in front of a
// real API server and checks that the proxy charges what the API server
// will actually do: a PATCH like a PUT, a DELETE whose body says it is not a
// dry run (whatever its query says) and not one whose body says it is, a
// deletecollection once, and never a break-glass Override, even under a
// tripped cluster-wide breaker.
func TestProxyBudgets(t *testing.T) {
	// Given a control plane, the Override CRD, and kubedefender serve with
	// the proxy charging budgets
	cp := framework.Start(t, framework.Options{Users: []framework.User{{Name: "oncall"}}})
	applyBase(t, cp, "namespace.yaml", "crd-override.yaml", "rbac-breakglass.yaml")
	bin := buildKubedefender(t)
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policy.yaml")
	writePolicy(t, policyFile, proxyBudgetsPolicy)
	certFile, keyFile := cp.IssueServingCert(t, "kubedefender-pb", "127.0.0.1", "localhost")
	pp, mp := freePort(t), freePort(t)
	proxyURL, metricsURL := fmt.Sprintf("https://127.0.0.1:%d", pp), fmt.Sprintf("http://127.0.0.1:%d", mp)
	startProcess(t, "serve-budgets-at-proxy", exec.Command(bin, "serve", "--policy", policyFile, "--kubeconfig", cp.AdminKubeconfig,
		"--proxy-listen", fmt.Sprintf("127.0.0.1:%d", pp), "--upstream", cp.URL, "--upstream-ca-file", cp.CACertFile,
		"--auth-mode", "front-proxy", "--client-ca-file", cp.CACertFile, "--budgets-at", "proxy",
		"--front-proxy-cert-file", cp.FrontProxyClientCertFile, "--front-proxy-key-file", cp.FrontProxyClientKeyFile,
		"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", mp), "--tls-cert-file", certFile, "--tls-private-key-file", keyFile, "--log-format", "text"))
	framework.Eventually(t, 30*time.Second, "kubedefender serve to be ready", func(ctx context.Context) (bool, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, nil //nolint:nilerr // not up yet
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	namespaces := []string{"pb-patch", "pb-query-dry", "pb-body-dry", "pb-collection", "pb-trip"}
	for _, ns := range namespaces {
		cp.CreateNamespace(t, ns)
	}
	grantRBAC(t, cp, namespaces)
	alice := proxyKubeconfig(t, t.TempDir(), proxyURL, cp.CACertFile, cp.Token(t, "alice"))
	aliceCfg := restVia(cp.TokenConfig(t, framework.UserAlice), proxyURL)
	aliceCfg.QPS, aliceCfg.Burst = -1, 0
	aliceClient := framework.ClientFor(t, aliceCfg)
	framework.Eventually(t, 10*time.Second, "alice's RBAC to take effect", func(ctx context.Context) (bool, error) {
		_, err := aliceClient.CoreV1().Pods("pb-trip").List(ctx, metav1.ListOptions{})
		return err == nil, nil
	})

	t.Run("a patch is charged like a put", func(t *testing.T) {
		const ns = "pb-patch"
		// Given a config map and a budget of 2 updates
		if _, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, "-n", ns, "create", "configmap", "c", "--from-literal=k=0"); err != nil {
			t.Fatalf("create configmap: %v: %s", err, errOut)
		}
		// When alice patches it, then replaces it (a PUT), through the proxy
		if _, errOut, err := cp.Kubectl(t, alice, "-n", ns, "patch", "configmap", "c", "--type=merge", "-p", `{"data":{"k":"1"}}`); err != nil {
			t.Fatalf("patch: %v: %s", err, errOut)
		}
		out, errOut, err := cp.Kubectl(t, alice, "-n", ns, "get", "configmap", "c", "-o", "yaml")
		if err != nil || !strings.Contains(out, `k: "1"`) {
			t.Fatalf("get after the patch: %v: %s%s", err, out, errOut)
		}
		manifest := filepath.Join(t.TempDir(), "cm.yaml")
		if err := os.WriteFile(manifest, []byte(strings.Replace(out, `k: "1"`, `k: "2"`, 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, errOut, err := cp.Kubectl(t, alice, "-n", ns, "replace", "-f", manifest); err != nil {
			t.Fatalf("replace: %v: %s", err, errOut)
		}
		// Then the third write, a patch, is refused by the budget
		_, errOut, err = cp.Kubectl(t, alice, "-n", ns, "patch", "configmap", "c", "--type=merge", "-p", `{"data":{"k":"3"}}`)
		if err == nil || !strings.Contains(errOut, `budget "cm-updates"`) {
			t.Fatalf("the third update (a patch): err=%v stderr=%q, want the cm-updates budget to refuse it", err, errOut)
		}
		// And the API server kept the second write
		cm, err := cp.Client.CoreV1().ConfigMaps(ns).Get(t.Context(), "c", metav1.GetOptions{})
		if err != nil || cm.Data["k"] != "2" {
			t.Fatalf("config map data %v (%v), want k=2", cm.Data, err)
		}
	})

	t.Run("dryRun=All in the query with a body {} is a real delete and is charged", func(t *testing.T) {
		const ns = "pb-query-dry"
		pods := createPods(t, cp.Client, ns, "q", 3)
		// When alice deletes two pods with ?dryRun=All and a DeleteOptions body {}
		for _, p := range pods[:2] {
			err := aliceClient.CoreV1().RESTClient().Delete().Namespace(ns).Resource("pods").Name(p).
				Param("dryRun", "All").Body([]byte(`{}`)).MaxRetries(0).Do(t.Context()).Error()
			if err != nil {
				t.Fatalf("delete %s: %v", p, err)
			}
			// Then the API server really deleted it (it reads the body, not the query)
			if _, err := cp.Client.CoreV1().Pods(ns).Get(t.Context(), p, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Fatalf("pod %s after its delete: %v, want NotFound", p, err)
			}
		}
		// And both were charged: the third delete finds the budget of 2 spent
		err := deletePod(t.Context(), aliceClient, ns, pods[2])
		wantRefusedByProxy(t, err, http.StatusForbidden, `budget "pod-deletes" (key namespace=pb-query-dry)`)
		if _, err := cp.Client.CoreV1().Pods(ns).Get(t.Context(), pods[2], metav1.GetOptions{}); err != nil {
			t.Fatalf("the refused pod: %v, want it still there", err)
		}
	})

	t.Run("dryRun only in the body is a dry run and is not charged", func(t *testing.T) {
		const ns = "pb-body-dry"
		pods := createPods(t, cp.Client, ns, "b", 3)
		// When alice dry-runs deletes with dryRun only in the body, with kubectl and client-go
		for range 3 {
			err := aliceClient.CoreV1().Pods(ns).Delete(t.Context(), pods[0], metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				t.Fatalf("dry-run delete: %v", err)
			}
		}
		if _, errOut, err := cp.Kubectl(t, alice, "-n", ns, "delete", "pod", pods[0], "--dry-run=server"); err != nil {
			t.Fatalf("kubectl delete --dry-run=server: %v: %s", err, errOut)
		}
		// Then the pod is still there
		if _, err := cp.Client.CoreV1().Pods(ns).Get(t.Context(), pods[0], metav1.GetOptions{}); err != nil {
			t.Fatalf("pod after dry runs: %v", err)
		}
		// And nothing was charged: two real deletes pass, the third is refused
		mustDelete(t, aliceClient, ns, pods[0], pods[1])
		wantRefusedByProxy(t, deletePod(t.Context(), aliceClient, ns, pods[2]), http.StatusForbidden, `budget "pod-deletes" (key namespace=pb-body-dry)`)
	})

	t.Run("a deletecollection is charged once by a budget on delete", func(t *testing.T) {
		const ns = "pb-collection"
		createPods(t, cp.Client, ns, "c", 4)
		rest := createPods(t, cp.Client, ns, "keep", 2)
		// When alice deletes four pods with one deletecollection
		err := aliceClient.CoreV1().Pods(ns).DeleteCollection(t.Context(), metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "app=c"})
		if err != nil {
			t.Fatalf("deletecollection: %v", err)
		}
		// Then the API server deleted them all
		framework.Eventually(t, 10*time.Second, "the collection to be gone", func(ctx context.Context) (bool, error) {
			l, err := cp.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=c"})
			return err == nil && len(l.Items) == 0, err
		})
		// And it took one token of 2: one more delete passes, the next is refused
		mustDelete(t, aliceClient, ns, rest[0])
		wantRefusedByProxy(t, deletePod(t.Context(), aliceClient, ns, rest[1]), http.StatusForbidden, `budget "pod-deletes" (key namespace=pb-collection)`)
	})

	t.Run("break-glass works under a tripped cluster-wide breaker", func(t *testing.T) {
		const ns = "pb-trip"
		oncall := proxyKubeconfig(t, t.TempDir(), proxyURL, cp.CACertFile, cp.Token(t, "oncall"))
		// Given an override granted before the trouble (on an unrelated scope)
		out := kd(t, bin, "breakglass", "grant", "--budget", "pod-deletes", "--namespace", "pb-none", "--for", "30m",
			"--reason", "INC-7: e2e", "--reset-breaker=false", "--kubeconfig", oncall)
		early := overrideNameFrom(t, out)
		// And the cluster-wide breaker over every write tripped
		for i := range 2 {
			_, _, _ = cp.Kubectl(t, oncall, "-n", ns, "create", "configmap", fmt.Sprintf("trip-%d", i))
		}
		_, errOut, err := cp.Kubectl(t, oncall, "-n", ns, "create", "configmap", "refused")
		if err == nil || !strings.Contains(errOut, `budget "cluster-writes"`) || !strings.Contains(errOut, "breaker is Open") {
			t.Fatalf("a write under the tripped breaker: err=%v stderr=%q, want the cluster-writes breaker to refuse it", err, errOut)
		}
		// When on-call revokes that override through the proxy
		out = kd(t, bin, "breakglass", "revoke", early, "--kubeconfig", oncall)
		// Then the API server deleted it
		dyn := dynamic.NewForConfigOrDie(cp.Config)
		gvr := schema.GroupVersionResource{Group: "kubedefender.io", Version: "v1alpha1", Resource: "overrides"}
		if _, err := dyn.Resource(gvr).Namespace("kubedefender-system").Get(t.Context(), early, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("override %s after `breakglass revoke` (%s): %v, want NotFound", early, strings.TrimSpace(out), err)
		}
		// And a new override can be granted (its SelfSubjectReview, a create,
		// is exempt like the Override) and revoked too
		out = kd(t, bin, "breakglass", "grant", "--budget", "cluster-writes", "--for", "10m", "--reason", "INC-7: e2e",
			"--reset-breaker=false", "--kubeconfig", oncall)
		name := overrideNameFrom(t, out)
		kd(t, bin, "breakglass", "revoke", name, "--kubeconfig", oncall)
		if _, err := dyn.Resource(gvr).Namespace("kubedefender-system").Get(t.Context(), name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("override %s after its revoke: %v, want NotFound", name, err)
		}
		// And the breaker still refuses everything else
		if _, errOut, err := cp.Kubectl(t, oncall, "-n", ns, "create", "configmap", "refused"); err == nil || !strings.Contains(errOut, `budget "cluster-writes"`) {
			t.Fatalf("a write after the revokes: err=%v stderr=%q, want the breaker to refuse it", err, errOut)
		}
	})

	// And the proxy charged every budget itself
	for _, rule := range []string{"cm-updates", "pod-deletes", "cluster-writes"} {
		series := fmt.Sprintf(`kubedefender_proxy_rejections_total{kind="budget",reason="Forbidden",rule=%q}`, rule)
		if v, err := scrape(context.Background(), metricsURL+"/metrics", series); err != nil || v < 1 {
			t.Errorf("%s = %v (%v), want at least 1", series, v, err)
		}
	}
}

// grantRBAC lets alice read and write pods and config maps in namespaces,
// and oncall write config maps in pb-trip and break the glass.
func grantRBAC(t *testing.T, cp *framework.ControlPlane, namespaces []string) {
	t.Helper()
	createEditorRole(t, cp, "proxy-budgets-e2e")
	for _, ns := range namespaces {
		bindClusterRole(t, cp, ns, "alice", "proxy-budgets-e2e", "alice")
	}
	bindClusterRole(t, cp, "pb-trip", "oncall", "proxy-budgets-e2e", "oncall")
	bindClusterRole(t, cp, "kubedefender-system", "oncall-breakglass", "kubedefender:breakglass", "oncall")
}

// wantRefusedByProxy checks that err is the proxy's own refusal (no
// admission webhook is deployed) with the given code and a message
// containing every want.
func wantRefusedByProxy(t *testing.T, err error, code int32, want ...string) {
	t.Helper()
	var se apierrors.APIStatus
	if err == nil || !errors.As(err, &se) {
		t.Fatalf("got %v, want the proxy's refusal with code %d", err, code)
	}
	if got := se.Status().Code; got != code {
		t.Errorf("status code = %d, want %d (error: %v)", got, code, err)
	}
	msg := se.Status().Message
	for _, w := range append([]string{"kubedefender: "}, want...) {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q does not contain %q", msg, w)
		}
	}
}
