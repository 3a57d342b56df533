package e2e

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/e2e/framework"
)

var updateMetrics = flag.Bool("update-metrics", false, "rewrite deploy/monitoring/metrics.golden.txt from a real scrape")

// metricsGolden lists the metric families a real `kubedefender serve`
// exposes. deploy/monitoring/rulestest checks every metric the Grafana
// dashboard queries against it, so a renamed metric fails the build, not the
// dashboard; this test keeps it fresh.
const metricsGolden = "deploy/monitoring/metrics.golden.txt"

const metricsPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: metrics}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods]}
    windows: [{window: 1m, limit: 3}]
    breaker: {recovery: Manual}
  rateLimits:
  - name: lists
    match: {verbs: [list]}
    qps: 1
    burst: 2
  priorityLevels:
  - {name: exempt, exempt: true}
  - {name: catch-all, shares: 5, queues: 4, handSize: 2, queueLengthLimit: 5}
  breakGlass: {namespace: kubedefender-system, maxDuration: 1h}
`

// TestMetricNamesGoldenIsFresh starts serve with every listener (webhook
// with client certificates, proxy, metrics), Redis and a kubeconfig, sends
// it webhook reviews and proxy requests until its breakers, rate limits and
// upstream errors have all counted, and compares the metric families of its
// /metrics with the golden file.
func TestMetricNamesGoldenIsFresh(t *testing.T) {
	root := repoRoot(t)
	// Given serve with every listener, Redis and the Override CRD
	cp := framework.Start(t, framework.Options{})
	if out, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, "apply", "--server-side", "-f", filepath.Join(root, "deploy/base/namespace.yaml"), "-f", filepath.Join(root, "deploy/base/crd-override.yaml")); err != nil {
		t.Fatalf("%v\n%s%s", err, out, errOut)
	}
	redisURL := startRedis(t)
	bin := buildKubedefender(t)
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policy.yaml")
	writePolicy(t, policyFile, metricsPolicy)
	certFile, keyFile := cp.IssueServingCert(t, "kubedefender", "127.0.0.1")
	clientCert, clientKey := cp.IssueClientCert(t, "kube-apiserver-webhook-client")
	pp, wp, mp := freePort(t), freePort(t), freePort(t)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", mp)
	startProcess(t, "serve", exec.Command(bin, "serve", "--policy", policyFile, "--kubeconfig", cp.AdminKubeconfig, "--redis-url", redisURL,
		"--proxy-listen", fmt.Sprintf("127.0.0.1:%d", pp), "--upstream", cp.URL, "--upstream-ca-file", cp.CACertFile, "--auth-mode", "passthrough",
		"--webhook-listen", fmt.Sprintf("127.0.0.1:%d", wp), "--webhook-client-ca-file", cp.CACertFile,
		"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", mp), "--tls-cert-file", certFile, "--tls-private-key-file", keyFile))
	framework.Eventually(t, 20*time.Second, "kubedefender serve to be up", func(ctx context.Context) (bool, error) {
		v, err := scrape(ctx, metricsURL, "kubedefender_policy_rules")
		return err == nil && v == 2, nil //nolint:nilerr // not up yet
	})

	// When the webhook judges deletes past the budget (its breaker opens)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS(t, cp.CACertFile, clientCert, clientKey)}}
	for i := 0; i < 5; i++ {
		review := fmt.Sprintf(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"00000000-0000-4000-8000-00000000000%d",
"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"name":"web-%d","namespace":"metrics",
"operation":"DELETE","userInfo":{"username":"jane"},"options":{"kind":"DeleteOptions","apiVersion":"meta.k8s.io/v1"}}}`, i, i)
		resp, err := client.Post(fmt.Sprintf("https://127.0.0.1:%d/validate", wp), "application/json", strings.NewReader(review))
		if err != nil {
			t.Fatalf("review %d: %v", i, err)
		}
		_ = resp.Body.Close()
	}
	// And a client without a certificate is refused
	noCert := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS(t, cp.CACertFile, "", "")}}
	if resp, err := noCert.Post(fmt.Sprintf("https://127.0.0.1:%d/validate", wp), "application/json", strings.NewReader("{}")); err == nil {
		_ = resp.Body.Close()
	}
	// And lists go through the proxy past their rate limit
	proxied := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS(t, cp.CACertFile, "", "")}}
	for i := 0; i < 5; i++ {
		resp, err := proxied.Get(fmt.Sprintf("https://127.0.0.1:%d/api/v1/namespaces/default/pods", pp))
		if err != nil {
			t.Fatalf("list %d through the proxy: %v", i, err)
		}
		_ = resp.Body.Close()
	}
	// Then the scrape has every family the golden file lists, and no other
	want := metricFamilies(t, metricsURL)
	if *updateMetrics {
		writeTestFile(t, filepath.Join(root, metricsGolden), strings.Join(want, "\n")+"\n")
	}
	got, err := os.ReadFile(filepath.Join(root, metricsGolden))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != strings.Join(want, "\n")+"\n" {
		t.Errorf("%s is stale; run: go test ./e2e -run TestMetricNamesGoldenIsFresh -update-metrics\nscraped:\n%s\ngolden:\n%s", metricsGolden, strings.Join(want, "\n"), got)
	}
}

// metricFamilies returns the sorted kubedefender_* families of a scrape, as
// "name type label,label,..." (the label names its series carry, le aside).
func metricFamilies(t *testing.T, url string) []string {
	t.Helper()
	family := regexp.MustCompile(`^# TYPE (kubedefender_[a-z_]+) ([a-z]+)$`)
	series := regexp.MustCompile(`^(kubedefender_[a-z_]+?)(?:_bucket|_sum|_count)?\{(.*)\} `)
	labelName := regexp.MustCompile(`(?:^|,)([a-zA-Z_][a-zA-Z0-9_]*)="`)
	types := map[string]string{}
	labels := map[string]map[string]bool{}
	for _, line := range metricLines(t, url) {
		if m := family.FindStringSubmatch(line); m != nil {
			types[m[1]] = m[2]
			labels[m[1]] = map[string]bool{}
			continue
		}
		m := series.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name := m[1]
		if _, ok := types[name]; !ok {
			continue
		}
		for _, l := range labelName.FindAllStringSubmatch(m[2], -1) {
			if l[1] != "le" {
				labels[name][l[1]] = true
			}
		}
	}
	var out []string
	for name, typ := range types {
		var ls []string
		for l := range labels[name] {
			ls = append(ls, l)
		}
		sort.Strings(ls)
		out = append(out, strings.TrimSpace(name+" "+typ+" "+strings.Join(ls, ",")))
	}
	sort.Strings(out)
	return out
}
