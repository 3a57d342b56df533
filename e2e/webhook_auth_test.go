package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/pki"
)

// TestWebhookAuthenticatesTheAPIServer: the API server presents a client
// certificate to the webhook (the upstream "authenticate apiservers"
// mechanism: an AdmissionConfiguration whose kubeconfig gives it a pair for
// every webhook host), `serve --webhook-client-ca-file` requires it, deletes
// through the API server are judged as before, and forged reviews from anyone
// else (an attacker on the pod network) get no HTTP answer and move no counter:
// they can neither trip a Manual breaker nor launder a real pod's delete.
func TestWebhookAuthenticatesTheAPIServer(t *testing.T) {
	// Given a control plane whose API server authenticates to webhooks with a client certificate
	cp := framework.Start(t, framework.Options{WebhookClientAuth: true})
	// And kubedefender serve that requires that certificate, with a budget of 3 pod deletes per namespace and a Manual breaker
	bin := buildKubedefender(t)
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policy.yaml")
	writePolicy(t, policyFile, budgetPolicy("auth", manualBreaker, 3, "1h"))
	certFile, keyFile := cp.IssueServingCert(t, "kubedefender-auth", "127.0.0.1", "localhost")
	wp, mp := freePort(t), freePort(t)
	webhookURL, metricsURL := fmt.Sprintf("https://127.0.0.1:%d/validate", wp), fmt.Sprintf("http://127.0.0.1:%d", mp)
	logFile := startProcess(t, "serve", exec.Command(bin, "serve", "--policy", policyFile,
		"--webhook-listen", fmt.Sprintf("127.0.0.1:%d", wp), "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", mp),
		"--webhook-client-ca-file", cp.WebhookClientCACertFile, "--webhook-client-allowed-names", framework.WebhookClientName,
		"--tls-cert-file", certFile, "--tls-private-key-file", keyFile, "--log-format", "text"))
	framework.Eventually(t, 20*time.Second, "kubedefender serve to be up", func(ctx context.Context) (bool, error) {
		v, err := scrape(ctx, metricsURL+"/metrics", `kubedefender_webhook_client_certificate_rejections_total{reason="untrusted"}`)
		return err == nil && v == 0, nil //nolint:nilerr // not up yet
	})
	kd(t, bin, "webhook", "config", "--policy", policyFile, "--name", "kd-auth", "--url", webhookURL,
		"--ca-bundle-file", cp.CACertFile, "--namespace-selector", scenarioLabel+"=auth", "--failure-policy", "Fail",
		"--apply", "--kubeconfig", cp.AdminKubeconfig)
	const ns = "auth"
	createNamespace(t, cp, ns, "auth")
	createPods(t, cp.Client, ns, "web", 5)
	framework.Eventually(t, 30*time.Second, "the API server to call the webhook with its certificate", func(ctx context.Context) (bool, error) {
		_ = cp.Client.CoreV1().Pods(ns).Delete(ctx, "web-4", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		v, err := scrape(ctx, metricsURL+"/metrics", `kubedefender_webhook_requests_total{operation="DELETE",result="allowed"}`)
		return v > 0, err
	})
	reviewsBefore := sumSeries(t, metricsURL+"/metrics", "kubedefender_webhook_requests_total{")
	decisionsBefore := sumSeries(t, metricsURL+"/metrics", "kubedefender_limiter_decisions_total{")

	// When attackers post forged reviews: five deletes in the namespace (a trip attempt on its Manual breaker)
	// and the delete of web-0 carrying its real UID (a launder attempt)
	web0, err := cp.Client.CoreV1().Pods(ns).Get(context.Background(), "web-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var forged [][]byte
	for i := range 5 {
		forged = append(forged, forgedReview(t, ns, fmt.Sprintf("forged-%d", i), types.UID(fmt.Sprintf("forged-uid-%d", i)), nil))
	}
	old, err := json.Marshal(web0)
	if err != nil {
		t.Fatal(err)
	}
	forged = append(forged, forgedReview(t, ns, "web-0", web0.UID, old))
	// One without a certificate, one with a certificate the API server itself trusts (the cluster CA's admin),
	// one from the webhook client CA under another name
	webhookCA, err := pki.LoadCA(cp.WebhookClientCACertFile, cp.WebhookClientCAKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	impostor, err := webhookCA.IssueClient(pki.ClientOptions{CommonName: "system:node:worker-1"})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := tls.LoadX509KeyPair(cp.AdminCertFile, cp.AdminKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	impostorPair, err := tls.X509KeyPair(impostor.CertPEM, impostor.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	attackers := []struct {
		name   string
		cert   *tls.Certificate
		reason string
	}{
		{"no certificate", nil, "no_certificate"},
		{"the cluster CA's admin certificate", &admin, "untrusted"},
		{"the webhook client CA's certificate for another name", &impostorPair, "name_not_allowed"},
	}
	for _, a := range attackers {
		client := webhookClient(t, cp.CACertFile, a.cert)
		for i, body := range forged {
			resp, err := client.Post(webhookURL, "application/json", bytes.NewReader(body))
			// Then none gets an HTTP answer: the TLS handshake fails
			if err == nil {
				_ = resp.Body.Close()
				t.Errorf("%s: forged review %d got HTTP %s, want a failed handshake", a.name, i, resp.Status)
			}
		}
		client.CloseIdleConnections()
	}
	// And each refusal is counted by reason
	for _, a := range attackers {
		series := fmt.Sprintf(`kubedefender_webhook_client_certificate_rejections_total{reason=%q}`, a.reason)
		if v, err := scrape(context.Background(), metricsURL+"/metrics", series); err != nil || v != float64(len(forged)) {
			t.Errorf("%s = %v (err %v), want %d", series, v, err, len(forged))
		}
	}
	// And no counter moved: no review reached the handler, no decision was made, no budget key was charged
	if v := sumSeries(t, metricsURL+"/metrics", "kubedefender_webhook_requests_total{"); v != reviewsBefore {
		t.Errorf("webhook requests went from %v to %v: a forged review was served", reviewsBefore, v)
	}
	if v := sumSeries(t, metricsURL+"/metrics", "kubedefender_limiter_decisions_total{"); v != decisionsBefore {
		t.Errorf("limiter decisions went from %v to %v: a forged review was judged", decisionsBefore, v)
	}
	if used, breaker := budgetKey(t, metricsURL, "pod-deletes", "namespace="+ns); used != 0 || (breaker != "" && breaker != "Closed") {
		t.Errorf("/status shows namespace=%s used %d, breaker %q; want nothing charged, breaker Closed", ns, used, breaker)
	}

	// When someone deletes all five pods through the API server
	// Then the budget stops the mass delete at 3: a tripped breaker would have denied all five,
	// and a laundered web-0 would have let a fourth through
	kubectlDeleteAllPods(t, cp, ns, 3, 2, `budget "pod-deletes" (key namespace=auth)`)
	// And /status shows the real charges only, with the breaker now Open
	if used, breaker := budgetKey(t, metricsURL, "pod-deletes", "namespace="+ns); used != 3 || breaker != "Open" {
		t.Errorf("/status shows namespace=%s used %d, breaker %q; want 3 and Open", ns, used, breaker)
	}
	// And the API server's handshakes were never refused, and serve did not warn about an open webhook
	logs, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(logs, []byte("does not authenticate its callers")) {
		t.Errorf("serve warned about an unauthenticated webhook although --webhook-client-ca-file is set:\n%s", logs)
	}
	checkMetricsDocumented(t, metricsURL+"/metrics")
}

// forgedReview is an AdmissionReview for the DELETE of pod ns/name as the API
// server would send it, by a cluster admin, with old as its oldObject (nil:
// a pod with uid).
func forgedReview(t *testing.T, ns, name string, uid types.UID, old []byte) []byte {
	t.Helper()
	if old == nil {
		old = fmt.Appendf(nil, `{"apiVersion":"v1","kind":"Pod","metadata":{"name":%q,"namespace":%q,"uid":%q}}`, name, ns, uid)
	}
	ar := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID("forged-" + strconv.FormatInt(time.Now().UnixNano(), 36)),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Name:      name,
			Namespace: ns,
			Operation: admissionv1.Delete,
			UserInfo:  authnv1.UserInfo{Username: "admin", Groups: []string{"system:masters"}},
			OldObject: runtime.RawExtension{Raw: old},
		},
	}
	body, err := json.Marshal(ar)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// webhookClient trusts caFile and presents cert (nil: none).
func webhookClient(t *testing.T, caFile string, cert *tls.Certificate) *http.Client {
	t.Helper()
	cfg := clientTLS(t, caFile, "", "")
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// sumSeries adds up every sample of /metrics whose line starts with prefix.
func sumSeries(t *testing.T, url, prefix string) float64 {
	t.Helper()
	sum := 0.0
	for _, line := range metricLines(t, url) {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("failed to parse %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// budgetKey reads one budget key from serve's /status: the most used of its
// windows and its breaker state ("" when the key is not listed).
func budgetKey(t *testing.T, metricsURL, budget, key string) (used int64, breaker string) {
	t.Helper()
	resp, err := http.Get(metricsURL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var st struct {
		Engine struct {
			Budgets []struct {
				Name string `json:"name"`
				Keys []struct {
					Key     string `json:"key"`
					Breaker string `json:"breaker"`
					Windows []struct {
						Used int64 `json:"used"`
					} `json:"windows"`
				} `json:"keys"`
			} `json:"budgets"`
		} `json:"engine"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("failed to decode /status: %v", err)
	}
	for _, b := range st.Engine.Budgets {
		if b.Name != budget {
			continue
		}
		for _, k := range b.Keys {
			if k.Key != key {
				continue
			}
			for _, w := range k.Windows {
				used = max(used, w.Used)
			}
			return used, k.Breaker
		}
	}
	return 0, ""
}
