package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/pki"
)

// buildKubedefender builds the kubedefender binary into a temporary directory.
func buildKubedefender(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kubedefender")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/kubedefender")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("failed to build kubedefender: %v\n%s", err, out)
	}
	return bin
}

// kd runs the kubedefender binary to completion, failing t on error.
func kd(t *testing.T, bin string, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubedefender %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("failed to find a free port: %v", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// scrape returns the value of the metric line that starts with series
// (name{labels}), or -1 when there is none.
func scrape(ctx context.Context, url, series string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return -1, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1, err
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return -1, sc.Err()
}

// metricLines fetches the Prometheus text exposition at url and returns
// its lines; a failed fetch or read fails t.
func metricLines(t *testing.T, url string) []string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("failed to read %s: %v", url, err)
	}
	return lines
}

func binaryScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given the kubedefender binary, certificates from `certs generate`, and a budget of 5 pod deletes
	bin := buildKubedefender(t)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	kd(t, bin, "certs", "generate", "--ip", "127.0.0.1", "--dns", "localhost", "--out-dir", certs, "--write-ca-key")
	policyFile := filepath.Join(dir, "policy.yaml")
	writePolicy(t, policyFile, budgetPolicy("binary", manualBreaker, 5, "1m"))
	webhookPort, metricsPort := freePort(t), freePort(t)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d", metricsPort)

	// And the Override CRD with its namespace, so that break-glass works
	if out, stderr, err := cp.Kubectl(t, cp.AdminKubeconfig, "apply", "-f", "../deploy/base/crd-override.yaml"); err != nil {
		t.Fatalf("failed to apply the Override CRD: %v\n%s%s", err, out, stderr)
	}
	cp.CreateNamespace(t, "kubedefender-system")
	waitOverridesServed(t, cp)

	// When `kubedefender serve` runs and `kubedefender webhook config --apply` registers it
	startProcess(t, "serve", exec.Command(bin, "serve", "--policy", policyFile, "--kubeconfig", cp.AdminKubeconfig,
		"--webhook-listen", fmt.Sprintf("127.0.0.1:%d", webhookPort), "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", metricsPort),
		"--tls-cert-file", filepath.Join(certs, pki.CertFile), "--tls-private-key-file", filepath.Join(certs, pki.KeyFile), "--log-format", "text"))
	framework.Eventually(t, 20*time.Second, "kubedefender serve to be ready", func(ctx context.Context) (bool, error) {
		v, err := scrape(ctx, metricsURL+"/metrics", `kubedefender_webhook_requests_total{operation="DELETE",result="allowed"}`)
		return v >= 0, err
	})
	out := kd(t, bin, "webhook", "config", "--policy", policyFile, "--name", "kd-binary",
		"--url", fmt.Sprintf("https://127.0.0.1:%d/validate", webhookPort), "--ca-bundle-file", filepath.Join(certs, pki.CACertFile),
		"--failure-policy", "Fail", "--namespace-selector", scenarioLabel+"=binary", "--apply", "--kubeconfig", cp.AdminKubeconfig)
	if !strings.Contains(out, "validatingwebhookconfiguration.admissionregistration.k8s.io/kd-binary applied") {
		t.Errorf("webhook config --apply printed %q", out)
	}
	const ns = "binary"
	createNamespace(t, cp, ns, "binary")
	createPods(t, cp.Client, ns, "web", 8)
	framework.Eventually(t, 30*time.Second, "the API server to call kubedefender serve", func(ctx context.Context) (bool, error) {
		_ = cp.Client.CoreV1().Pods(ns).Delete(ctx, "web-0", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		v, err := scrape(ctx, metricsURL+"/metrics", `kubedefender_webhook_requests_total{operation="DELETE",result="allowed"}`)
		return v > 0, err
	})

	// And someone runs kubectl delete pods --all on 8 pods
	// Then 5 are deleted, 3 denied with the message, and /metrics counts the 3 denials
	_, stderr, _ := kubectlDeleteAllPods(t, cp, ns, 5, 3, `budget "pod-deletes" (key namespace=binary)`)
	ctx := context.Background()
	if v, err := scrape(ctx, metricsURL+"/metrics", `kubedefender_webhook_requests_total{operation="DELETE",result="denied"}`); err != nil || v != 3 {
		t.Errorf("denied = %v (err %v), want 3", v, err)
	}

	// When an operator runs the break-glass command the denial printed
	i := strings.Index(stderr, "kubedefender breakglass grant ")
	if i < 0 {
		t.Fatalf("the denial names no break-glass command:\n%s", stderr)
	}
	cmdline := strings.SplitN(stderr[i:], "\n", 2)[0]
	cmdline, _, _ = strings.Cut(cmdline, ` --reason "<ticket>: <why>"`)
	args := strings.Fields(cmdline)[1:]
	args = append(args, "--reason", "INC-1: e2e proves the way out", "--kubeconfig", cp.AdminKubeconfig)
	if out := kd(t, bin, args...); !strings.Contains(out, "granted") {
		t.Errorf("breakglass grant printed %q", out)
	}

	// Then the breaker is reset and the remaining pods can be deleted
	framework.Eventually(t, 20*time.Second, "the override to let deletes through", func(ctx context.Context) (bool, error) {
		return deletePod(ctx, cp.Client, ns, firstPod(t, cp, ns)) == nil, nil
	})
	if out, stderr, err := cp.Kubectl(t, cp.AdminKubeconfig, "delete", "pods", "--all", "-n", ns, "--wait=false"); err != nil {
		t.Errorf("kubectl delete --all under the override: %v\n%s%s", err, out, stderr)
	}

	// When the serving pair is rotated under the same CA
	kd(t, bin, "certs", "generate", "--ip", "127.0.0.1", "--dns", "localhost", "--out-dir", certs,
		"--ca-cert", filepath.Join(certs, pki.CACertFile), "--ca-key", filepath.Join(certs, pki.CAKeyFile))
	newPEM, err := os.ReadFile(filepath.Join(certs, pki.CertFile))
	if err != nil {
		t.Fatalf("%v", err)
	}

	// Then the webhook serves the new certificate without a restart
	framework.Eventually(t, 15*time.Second, "the rotated certificate to be served", func(context.Context) (bool, error) {
		served, err := servedCert(fmt.Sprintf("127.0.0.1:%d", webhookPort), filepath.Join(certs, pki.CACertFile))
		if err != nil {
			return false, err
		}
		return bytes.Contains(newPEM, []byte(strings.TrimSpace(served))), nil
	})
	if v, _ := scrape(ctx, metricsURL+"/metrics", `kubedefender_webhook_certificate_reloads_total{result="success"}`); v != 1 {
		t.Errorf("certificate reloads = %v, want 1", v)
	}
}

func firstPod(t *testing.T, cp *framework.ControlPlane, ns string) string {
	t.Helper()
	l, err := cp.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil || len(l.Items) == 0 {
		t.Fatalf("no pod left in %s (err %v)", ns, err)
	}
	return l.Items[0].Name
}

// servedCert handshakes with addr, verifying against caFile, and returns the
// leaf certificate in PEM.
func servedCert(addr, caFile string) (string, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	leaf := conn.ConnectionState().PeerCertificates[0]
	return string(pemEncode(leaf.Raw)), nil
}

func pemEncode(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
