package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubedefender/kubedefender/e2e/framework"
)

const servePolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: serve-e2e}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete, deletecollection], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: 3}]
    breaker: {recovery: Manual}
  rateLimits:
  - name: kubectl-lists
    match: {verbs: [list], userAgents: ["^kubectl/"]}
    per: [user]
    qps: 1
    burst: 2
  priorityLevels:
  - {name: exempt, exempt: true}
  - {name: workload, shares: 10, queues: 16, handSize: 4, queueLengthLimit: 20}
  - {name: catch-all, shares: 5, queues: 8, handSize: 2, queueLengthLimit: 10}
  flowSchemas:
  - {name: masters, precedence: 100, priorityLevel: exempt, match: {groups: ["system:masters"]}}
  - {name: people, precedence: 500, priorityLevel: workload, distinguisher: ByUser, match: {users: [alice]}}
  concurrency: 50
`

// TestServeProxyAndWebhookTogether runs the whole product as shipped: one
// `kubedefender serve` with the proxy in front of the real API server, the
// webhook registered with it, and Redis behind both. kubectl talks to the
// proxy with a token; the webhook charges the deletes, the proxy rejects
// early once the breaker is open, and rate limits a listing loop.
func TestServeProxyAndWebhookTogether(t *testing.T) {
	// Given a control plane, Redis, and kubedefender serve with proxy and webhook
	cp := framework.Start(t, framework.Options{})
	redisURL := startRedis(t)
	bin := buildKubedefender(t)
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policy.yaml")
	writePolicy(t, policyFile, servePolicy)
	certFile, keyFile := cp.IssueServingCert(t, "kubedefender", "127.0.0.1", "localhost")
	pp, wp, mp := freePort(t), freePort(t), freePort(t)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d", mp)
	startProcess(t, "serve", exec.Command(bin, "serve", "--policy", policyFile, "--kubeconfig", cp.AdminKubeconfig, "--redis-url", redisURL,
		"--proxy-listen", fmt.Sprintf("127.0.0.1:%d", pp), "--upstream", cp.URL, "--upstream-ca-file", cp.CACertFile,
		"--auth-mode", "front-proxy", "--client-ca-file", cp.CACertFile,
		"--front-proxy-cert-file", cp.FrontProxyClientCertFile, "--front-proxy-key-file", cp.FrontProxyClientKeyFile,
		"--webhook-listen", fmt.Sprintf("127.0.0.1:%d", wp), "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", mp),
		"--tls-cert-file", certFile, "--tls-private-key-file", keyFile, "--log-format", "text"))
	framework.Eventually(t, 20*time.Second, "kubedefender serve to be up", func(ctx context.Context) (bool, error) {
		v, err := scrape(ctx, metricsURL+"/metrics", "kubedefender_policy_rules")
		return err == nil && v == 4, nil //nolint:nilerr // not up yet
	})
	kd(t, bin, "webhook", "config", "--policy", policyFile, "--name", "kd-serve", "--url", fmt.Sprintf("https://127.0.0.1:%d/validate", wp),
		"--ca-bundle-file", cp.CACertFile, "--namespace-selector", scenarioLabel+"=serve", "--failure-policy", "Fail",
		"--apply", "--kubeconfig", cp.AdminKubeconfig)
	const ns = "serve"
	createNamespace(t, cp, ns, "serve")
	createPods(t, cp.Client, ns, "web", 6)
	// (edit and admin are aggregated roles, empty without kube-controller-manager)
	for _, args := range [][]string{
		{"create", "role", "pod-editor", "--verb=get,list,watch,delete,deletecollection", "--resource=pods"},
		{"create", "rolebinding", "alice-pods", "--role=pod-editor", "--user=alice"},
	} {
		if out, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, append([]string{"-n", ns}, args...)...); err != nil {
			t.Fatalf("%v: %v\n%s%s", args, err, out, errOut)
		}
	}
	alice := proxyKubeconfig(t, dir, fmt.Sprintf("https://127.0.0.1:%d", pp), cp.CACertFile, cp.Token(t, "alice"))
	framework.Eventually(t, 30*time.Second, "the API server to call the webhook", func(ctx context.Context) (bool, error) {
		_, _, _ = cp.Kubectl(t, cp.AdminKubeconfig, "-n", ns, "delete", "pod", "web-5", "--dry-run=server")
		v, err := scrape(ctx, metricsURL+"/metrics", `kubedefender_webhook_requests_total{operation="DELETE",result="allowed"}`)
		return v > 0, err
	})

	// When alice lists pods through the proxy
	var out, errOut string
	var err error
	framework.Eventually(t, 10*time.Second, "alice's RoleBinding to take effect", func(context.Context) (bool, error) {
		out, errOut, err = cp.Kubectl(t, alice, "-n", ns, "get", "pods", "-o", "name")
		return err == nil || !strings.Contains(errOut, "forbidden"), nil
	})
	// Then she sees them: authenticated by TokenReview, authorized by the API server
	if err != nil || strings.Count(out, "pod/") != 6 {
		t.Fatalf("kubectl get pods through the proxy: %v\n%s%s", err, out, errOut)
	}
	// And she cannot read secrets: RBAC still decides
	if _, errOut, err := cp.Kubectl(t, alice, "-n", ns, "get", "secrets"); err == nil || !strings.Contains(errOut, "forbidden") {
		t.Fatalf("alice read secrets through the proxy: %v %s", err, errOut)
	}

	// When alice deletes every pod through the proxy
	out, errOut, _ = cp.Kubectl(t, alice, "-n", ns, "delete", "pods", "--all", "--wait=false")
	t.Logf("kubectl delete pods --all through the proxy:\n%s%s", out, errOut)
	// Then 3 are deleted and the webhook's breaker stops the rest
	if got := strings.Count(out, "deleted"); got != 3 {
		t.Errorf("%d pods deleted through the proxy, want 3:\n%s\n%s", got, out, errOut)
	}
	// And the next delete is rejected by the proxy itself, before the API server sees it
	_, errOut, err = cp.Kubectl(t, alice, "-n", ns, "delete", "pod", "web-4", "--wait=false")
	if err == nil || !strings.Contains(errOut, "kubedefender breakglass grant --budget pod-deletes --namespace serve") {
		t.Errorf("a delete with the breaker open: %v\n%s", err, errOut)
	}
	ctx := context.Background()
	if v, err := scrape(ctx, metricsURL+"/metrics", `kubedefender_proxy_rejections_total{kind="budget",reason="Forbidden",rule="pod-deletes"}`); err != nil || v < 1 {
		t.Errorf("proxy budget rejections = %v (%v), want at least 1", v, err)
	}

	// When alice lists in a tight loop, over her 1/s rate limit
	for i := 0; i < 4; i++ {
		if out, errOut, err := cp.Kubectl(t, alice, "-n", ns, "get", "pods", "-o", "name"); err != nil {
			t.Fatalf("list %d: kubectl should back off on 429 and succeed: %v\n%s%s", i, err, out, errOut)
		}
	}
	// Then the proxy answered some with 429 and kubectl backed off and succeeded
	if v, err := scrape(ctx, metricsURL+"/metrics", `kubedefender_limiter_decisions_total{front="proxy",kind="rateLimit",result="denied",rule="kubectl-lists"}`); err != nil || v < 1 {
		t.Errorf("rate-limit denials = %v (%v), want at least 1", v, err)
	}

	// And /status reports the priority levels and the store
	resp, err := http.Get(metricsURL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Store          string `json:"store"`
		PriorityLevels []struct {
			Name       string `json:"name"`
			SeatsLimit int    `json:"seatsLimit"`
		} `json:"priorityLevels"`
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	_ = resp.Body.Close()
	if err != nil || st.Store != "redis" || len(st.PriorityLevels) != 3 || st.PriorityLevels[1].SeatsLimit != 34 {
		t.Errorf("status: %+v (%v), want store redis and 3 levels, workload with 34 of 50 seats", st, err)
	}

	// And every metric the process exposes is documented in docs/metrics.md
	checkMetricsDocumented(t, metricsURL+"/metrics")
}

// proxyKubeconfig writes a kubeconfig that reaches the API server through the proxy with a token.
func proxyKubeconfig(t *testing.T, dir, server, caFile, token string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["proxy"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["proxy"] = &clientcmdapi.Context{Cluster: "proxy", AuthInfo: "user"}
	cfg.CurrentContext = "proxy"
	path := filepath.Join(dir, "proxy.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkMetricsDocumented fails t for every kubedefender_* metric family that
// docs/metrics.md's table does not name.
func checkMetricsDocumented(t *testing.T, url string) {
	t.Helper()
	metricsDoc, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	family := regexp.MustCompile(`^# TYPE (kubedefender_[a-z_]+) `)
	n := 0
	for _, line := range metricLines(t, url) {
		m := family.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n++
		if !strings.Contains(string(metricsDoc), "`"+m[1]+"`") {
			t.Errorf("metric %s is exposed but not documented in docs/metrics.md's table", m[1])
		}
	}
	if n < 10 {
		t.Errorf("only %d kubedefender metric families exposed; want the limiter, store, webhook, proxy and policy ones", n)
	}
}
