package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/proxy"
)

// TestProxyAttack replays the proxy findings of the attack review of issue 9
// against a real kube-apiserver, with budgets charged at the proxy: what
// the API server does with a request is what the proxy charges.
func TestProxyAttack(t *testing.T) {
	cp := framework.Start(t, framework.Options{})
	for _, s := range []struct {
		name string
		run  func(t *testing.T, cp *framework.ControlPlane)
	}{
		{"a server-side apply that creates through the proxy is charged by a budget on create", proxyApplyCreatesScenario},
		{"a server-side dry-run eviction (dryRun in the Eviction body) through the proxy takes nothing", proxyDryRunEvictionScenario},
	} {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			s.run(t, cp)
		})
	}
}

// startBudgetProxy serves an in-process proxy charging budgets itself in
// front of cp (front-proxy mode, client certificates from the cluster CA)
// and returns the admin's rest.Config through it.
func startBudgetProxy(t *testing.T, cp *framework.ControlPlane, name, policyYAML string) *rest.Config {
	t.Helper()
	p := newProxyFor(t, cp, name, policyYAML, true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("failed to listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	c := restVia(cp.Config, "https://"+ln.Addr().String())
	c.QPS, c.Burst = -1, 0
	return c
}

// newProxyFor builds a proxy in front of cp with the policy given.
func newProxyFor(t *testing.T, cp *framework.ControlPlane, name, policyYAML string, budgetsAtProxy bool) *proxy.Proxy {
	t.Helper()
	pf := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pf, []byte(policyYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := policy.NewWatcher(policy.WatcherConfig{Path: pf})
	if err != nil {
		t.Fatalf("failed to load the policy: %v", err)
	}
	eng, err := limiter.NewEngine(limiter.EngineConfig{Policy: w.Current()})
	if err != nil {
		t.Fatalf("failed to build the engine: %v", err)
	}
	up, _ := url.Parse(cp.URL)
	cert, key := cp.IssueServingCert(t, name, "127.0.0.1")
	p, err := proxy.New(proxy.Config{Upstream: up, UpstreamCAFile: cp.CACertFile, AuthMode: proxy.AuthFrontProxy,
		ClientCAFile: cp.CACertFile, FrontProxyCertFile: cp.FrontProxyClientCertFile, FrontProxyKeyFile: cp.FrontProxyClientKeyFile,
		TLSCertFile: cert, TLSKeyFile: key, Engine: eng, Policy: w.Current(), BudgetsAtProxy: budgetsAtProxy})
	if err != nil {
		t.Fatalf("failed to build the proxy: %v", err)
	}
	return p
}

// The API server creates the object of a server-side apply PATCH that names
// one that does not exist (patch.go: forceAllowCreate for apply patches;
// admission sees CREATE).
func proxyApplyCreatesScenario(t *testing.T, cp *framework.ControlPlane) {
	const ns = "pa-ssa"
	cp.CreateNamespace(t, ns)
	// Given a budget of 1 config map create in pa-ssa, charged at the proxy
	cfg := startBudgetProxy(t, cp, "pa-ssa", `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: pa-ssa}
spec:
  budgets:
  - name: cm-creates
    match: {verbs: [create], resources: [configmaps], namespaces: [pa-ssa]}
    windows: [{window: 1h, limit: 1}]
`)
	c := framework.ClientFor(t, cfg)
	// When config map a is created with a POST (the budget is spent)
	if _, err := c.CoreV1().ConfigMaps(ns).Create(t.Context(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("failed to create config map a: %v", err)
	}
	// And config map b with a server-side apply (kubectl apply --server-side)
	err := c.CoreV1().RESTClient().Patch("application/apply-patch+yaml").Namespace(ns).Resource("configmaps").Name("b").
		Param("fieldManager", "pa").Body([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")).MaxRetries(0).Do(t.Context()).Error()
	// Then the proxy refuses it with the create budget, and b does not exist
	wantRefusedByProxy(t, err, http.StatusTooManyRequests, `budget "cm-creates"`)
	if _, gerr := cp.Client.CoreV1().ConfigMaps(ns).Get(t.Context(), "b", metav1.GetOptions{}); !apierrors.IsNotFound(gerr) {
		t.Errorf("config map b after the refused apply: %v, want NotFound", gerr)
	}
}

// The API server only dry-runs an Eviction whose deleteOptions.dryRun is
// set (eviction.go propagateDryRun), as kubectl drain --dry-run=server sends.
func proxyDryRunEvictionScenario(t *testing.T, cp *framework.ControlPlane) {
	const ns = "pa-drain"
	cp.CreateNamespace(t, ns)
	// Given a budget of 1 eviction in pa-drain, charged at the proxy, and 2 pods
	cfg := startBudgetProxy(t, cp, "pa-drain", `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: pa-drain}
spec:
  budgets:
  - name: evictions
    match: {verbs: [evict], resources: [pods], namespaces: [pa-drain]}
    windows: [{window: 1h, limit: 1}]
`)
	c := framework.ClientFor(t, cfg)
	pods := createPods(t, cp.Client, ns, "web", 2)
	// When web-0 is evicted twice in a server-side dry run through the proxy
	for range 2 {
		if err := evictThrough(t.Context(), c, ns, pods[0], &metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Fatalf("failed to dry-run the eviction: %v", err)
		}
	}
	// Then the pod is still there (the API server only pretended)
	if _, err := cp.Client.CoreV1().Pods(ns).Get(t.Context(), pods[0], metav1.GetOptions{}); err != nil {
		t.Fatalf("pod after dry-run evictions: %v", err)
	}
	// And the budget is intact: one real eviction passes, the next is refused
	if err := evictThrough(t.Context(), c, ns, pods[1], nil); err != nil {
		t.Errorf("a real eviction after two dry-run evictions: %v, want it admitted (dry runs take nothing)", err)
	}
	wantRefusedByProxy(t, evictThrough(t.Context(), c, ns, pods[0], nil), http.StatusTooManyRequests, `budget "evictions"`)
}

// evictThrough posts an Eviction as client-go's Evict does, without its
// retries (which would wait out a refusal's Retry-After).
func evictThrough(ctx context.Context, c kubernetes.Interface, ns, name string, opts *metav1.DeleteOptions) error {
	body, err := json.Marshal(&policyv1.Eviction{TypeMeta: metav1.TypeMeta{APIVersion: "policy/v1", Kind: "Eviction"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, DeleteOptions: opts})
	if err != nil {
		return err
	}
	return c.CoreV1().RESTClient().Post().Namespace(ns).Resource("pods").Name(name).SubResource("eviction").
		Body(body).SetHeader("Content-Type", "application/json").MaxRetries(0).Do(ctx).Error()
}

// TestProxyReadyzWithoutAnonymousAuth: kube-apiserver --anonymous-auth=false
// (CIS benchmark 1.2.1) answers an unauthenticated /readyz with 401. The
// proxy probes with its front-proxy identity, so it is ready — and so is
// `serve`'s /readyz on the metrics listener, which the Deployment's
// readinessProbe uses.
func TestProxyReadyzWithoutAnonymousAuth(t *testing.T) {
	cp := framework.Start(t, framework.Options{APIServerFlags: []string{"--anonymous-auth=false"}})
	// Given a healthy API server that refuses anonymous callers
	if _, err := cp.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(t.Context()); err != nil {
		t.Fatalf("authenticated /readyz: %v", err)
	}
	anon, err := http.NewRequestWithContext(t.Context(), http.MethodGet, cp.URL+"/readyz", nil)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := rest.HTTPClientFor(&rest.Config{Host: cp.URL, TLSClientConfig: rest.TLSClientConfig{CAFile: cp.CACertFile}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(anon)
	if err != nil {
		t.Fatalf("anonymous /readyz: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous /readyz answered %d, want 401 (--anonymous-auth=false)", resp.StatusCode)
	}
	// And a proxy in front of it (front-proxy mode, the recommended one)
	p := newProxyFor(t, cp, "pa-readyz", "apiVersion: kubedefender.io/v1alpha1\nkind: DefenderPolicy\nmetadata: {name: pa-readyz}\nspec: {}\n", false)
	// When its readiness is asked
	rec := httptest.NewRecorder()
	p.Readyz().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/kubedefender/readyz", nil))
	// Then it is ready
	if rec.Code != http.StatusOK {
		t.Errorf("proxy readiness against a healthy API server with --anonymous-auth=false: %d %s, want 200", rec.Code, rec.Body.String())
	}
}
