package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/pki"
)

const breakglassPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: breakglass-e2e}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete, deletecollection, evict], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: 5}, {window: 1h, limit: 100}]
    breaker: {recovery: Manual}
    onStoreFailure: Local
  breakGlass: {namespace: kubedefender-system, maxDuration: 1h}
`

// replica is one `kubedefender serve` process.
type replica struct {
	name       string
	webhookURL string
	metricsURL string
	logFile    string
}

// TestBreakGlass walks an incident: a mass delete trips the breaker shared by
// two replicas through Redis; an on-call engineer with the
// kubedefender:breakglass role grants an override with the CLI; every replica
// lets deletes through within 2 s; the override expires and the budget counts
// again. A user without the role is refused by the API server. Events,
// metrics, `breakglass list` and `status` show each step.
func TestBreakGlass(t *testing.T) {
	// Given a control plane with an on-call user and a developer
	cp := framework.Start(t, framework.Options{Users: []framework.User{{Name: "oncall"}, {Name: "dev"}}})
	applyBase(t, cp, "namespace.yaml", "crd-override.yaml", "rbac-breakglass.yaml")
	if out, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, "-n", "kubedefender-system", "create", "rolebinding", "oncall-breakglass",
		"--clusterrole=kubedefender:breakglass", "--user=oncall"); err != nil {
		t.Fatalf("rolebinding: %v\n%s%s", err, out, errOut)
	}
	waitOverridesServed(t, cp)

	// And two kubedefender replicas sharing one Redis, the webhook registered with the first
	redisURL := startRedis(t)
	bin := buildKubedefender(t)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	kd(t, bin, "certs", "generate", "--ip", "127.0.0.1", "--dns", "localhost", "--out-dir", certs)
	caFile := filepath.Join(certs, pki.CACertFile)
	policyFile := filepath.Join(dir, "policy.yaml")
	writePolicy(t, policyFile, breakglassPolicy)
	a := startReplica(t, bin, "replica-a", policyFile, certs, redisURL, cp.AdminKubeconfig)
	b := startReplica(t, bin, "replica-b", policyFile, certs, redisURL, cp.AdminKubeconfig)
	kd(t, bin, "webhook", "config", "--policy", policyFile, "--name", "kd-breakglass", "--url", a.webhookURL,
		"--ca-bundle-file", caFile, "--failure-policy", "Fail", "--namespace-selector", scenarioLabel+"=breakglass",
		"--apply", "--kubeconfig", cp.AdminKubeconfig)
	const ns = "bg-prod"
	createNamespace(t, cp, ns, "breakglass")
	pods := createPods(t, cp.Client, ns, "web", 16)
	framework.Eventually(t, 30*time.Second, "the API server to call replica A", func(ctx context.Context) (bool, error) {
		_ = cp.Client.CoreV1().Pods(ns).Delete(ctx, pods[15], metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		v, err := scrape(ctx, a.metricsURL+"/metrics", `kubedefender_webhook_requests_total{operation="DELETE",result="allowed"}`)
		return v > 0, err
	})

	// When a mass delete runs into the budget of 5 per minute
	mustDelete(t, cp.Client, ns, pods[:5]...)
	err := deletePod(context.Background(), cp.Client, ns, pods[5])

	// Then the 6th delete is denied by the Manual breaker with the break-glass command
	wantDenied(t, err, http.StatusForbidden, `budget "pod-deletes" (key namespace=bg-prod)`,
		"kubedefender breakglass grant --budget pod-deletes --namespace bg-prod")
	// And the other replica sees the same open breaker through Redis
	if allowed, msg := review(t, b, caFile, ns, pods[6]); allowed || !strings.Contains(msg, "breaker is Open") {
		t.Fatalf("replica B: allowed=%v %q, want the shared breaker to deny", allowed, msg)
	}

	// When a developer without the role tries to break the glass
	devKubeconfig := cp.TokenKubeconfig(t, "dev")
	out, errOut, err := runKD(bin, "breakglass", "grant", "--budget", "pod-deletes", "--namespace", ns, "--for", "15s",
		"--reason", "INC-42: planned drain", "--kubeconfig", devKubeconfig)
	// Then the API server refuses it
	if err == nil || !strings.Contains(errOut, "forbidden") {
		t.Fatalf("dev's grant: err %v\nstdout %s\nstderr %s; want forbidden", err, out, errOut)
	}

	// When the on-call engineer grants an override for the namespace
	oncall := cp.TokenKubeconfig(t, "oncall")
	granted := time.Now()
	out = kd(t, bin, "breakglass", "grant", "--budget", "pod-deletes", "--namespace", ns, "--for", "15s",
		"--reason", "INC-42: planned drain", "--kubeconfig", oncall)
	name := overrideNameFrom(t, out)

	// Then every replica lets the deletes through within 2 s
	for _, r := range []*replica{a, b} {
		framework.Eventually(t, 5*time.Second, r.name+" to apply the override", func(context.Context) (bool, error) {
			allowed, _ := review(t, r, caFile, ns, pods[6])
			return allowed, nil
		})
		took := time.Since(granted)
		t.Logf("%s applied the override %s after the grant", r.name, took.Round(time.Millisecond))
		if took > 2*time.Second {
			t.Errorf("%s applied the override after %s, want within 2s", r.name, took)
		}
	}
	mustDelete(t, cp.Client, ns, pods[5:8]...)

	// And `breakglass list` shows it active, requested by oncall
	out = kd(t, bin, "breakglass", "list", "--kubeconfig", oncall)
	if !strings.Contains(out, name) || !strings.Contains(out, "Active") || !strings.Contains(out, "oncall") {
		t.Errorf("breakglass list:\n%s", out)
	}
	// And `status` shows it on both replicas
	out = kd(t, bin, "status", "--server", a.metricsURL, "--server", b.metricsURL)
	if strings.Count(out, name) != 2 {
		t.Errorf("status shows the override %d times, want once per replica:\n%s", strings.Count(out, name), out)
	}
	// And a replica that starts while the override is active (a rolling
	// update) applies it without resetting the shared counters again
	framework.Eventually(t, 10*time.Second, "the reset to be recorded on the override", func(ctx context.Context) (bool, error) {
		raw, err := cp.Client.CoreV1().RESTClient().Get().AbsPath("/apis/kubedefender.io/v1alpha1/namespaces/kubedefender-system/overrides", name).DoRaw(ctx)
		return err == nil && strings.Contains(string(raw), "kubedefender.io/breakers-reset"), nil //nolint:nilerr // not yet
	})
	c := startReplica(t, bin, "replica-c", policyFile, certs, redisURL, cp.AdminKubeconfig)
	framework.Eventually(t, 10*time.Second, "replica-c to apply the override", func(context.Context) (bool, error) {
		allowed, _ := review(t, c, caFile, ns, pods[8])
		return allowed, nil
	})
	framework.Eventually(t, 5*time.Second, "replica-c to skip the reset", func(context.Context) (bool, error) {
		logs, err := os.ReadFile(c.logFile)
		return err == nil && bytes.Contains(logs, []byte("already reset in the shared store")), nil //nolint:nilerr // not yet
	})

	// And the metrics count the use
	ctx := context.Background()
	if v, err := scrape(ctx, a.metricsURL+"/metrics", `kubedefender_overrides_active`); err != nil || v != 1 {
		t.Errorf("overrides_active = %v (%v), want 1", v, err)
	}
	if v, err := scrape(ctx, a.metricsURL+"/metrics", `kubedefender_limiter_overrides_used_total{rule="pod-deletes"}`); err != nil || v < 3 {
		t.Errorf("overrides_used_total = %v (%v), want at least 3", v, err)
	}

	// When the override expires
	override, err := cp.Client.CoreV1().RESTClient().Get().AbsPath("/apis/kubedefender.io/v1alpha1/namespaces/kubedefender-system/overrides", name).DoRaw(ctx)
	if err != nil {
		t.Fatalf("get override: %v", err)
	}
	var o struct {
		Spec struct {
			ExpiresAt time.Time `json:"expiresAt"`
			Requested string    `json:"requestedBy"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(override, &o); err != nil {
		t.Fatal(err)
	}
	if o.Spec.Requested != "oncall" {
		t.Errorf("requestedBy = %q, want oncall (from a SelfSubjectReview)", o.Spec.Requested)
	}
	time.Sleep(time.Until(o.Spec.ExpiresAt) + 1500*time.Millisecond)

	// Then deletes are budgeted again: the breaker was reset when the override
	// activated, so 5 pass and the 6th is denied
	mustDelete(t, cp.Client, ns, pods[8:13]...)
	wantDenied(t, deletePod(ctx, cp.Client, ns, pods[13]), http.StatusForbidden, `budget "pod-deletes"`)

	// And Events on the Override record its activation and expiry on each replica
	framework.Eventually(t, 10*time.Second, "Activated and Expired events from both replicas", func(ctx context.Context) (bool, error) {
		evs, err := cp.Client.CoreV1().Events("kubedefender-system").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			return false, err
		}
		seen := map[string]bool{}
		for _, e := range evs.Items {
			seen[e.Reason+"/"+e.Source.Host] = true
		}
		return seen["Activated/replica-a"] && seen["Activated/replica-b"] && seen["Expired/replica-a"] && seen["Expired/replica-b"], nil
	})

	// And no log line of either replica holds a bearer token or a private key
	for _, r := range []*replica{a, b} {
		logs, err := os.ReadFile(r.logFile)
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range []string{cp.Token(t, "oncall"), cp.Token(t, "dev"), cp.Token(t, framework.UserAdmin), "PRIVATE KEY"} {
			if bytes.Contains(logs, []byte(secret)) {
				t.Errorf("%s's log holds a secret (%.12s…)", r.name, secret)
			}
		}
		if !bytes.Contains(logs, []byte("break-glass override active")) {
			t.Errorf("%s's log does not record the override's activation", r.name)
		}
	}
}

// startRedis starts a throwaway redis-server on a free loopback port.
func startRedis(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is not installed: run `make redis` (apt-get install redis-server): %v", err)
	}
	port := freePort(t)
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	cmd.Dir = t.TempDir()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("failed to start redis-server: %v", err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	framework.Eventually(t, 10*time.Second, "redis-server to answer", func(context.Context) (bool, error) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, nil
		}
		defer func() { _ = c.Close() }()
		_, _ = c.Write([]byte("PING\r\n"))
		buf := make([]byte, 16)
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := c.Read(buf)
		return strings.HasPrefix(string(buf[:n]), "+PONG"), nil
	})
	return "redis://" + addr + "/0"
}

// startReplica runs `kubedefender serve` with the webhook and metrics on free
// ports and waits until it is ready.
func startReplica(t *testing.T, bin, name, policyFile, certs, redisURL, kubeconfig string) *replica {
	t.Helper()
	wp, mp := freePort(t), freePort(t)
	r := &replica{name: name, webhookURL: fmt.Sprintf("https://127.0.0.1:%d/validate", wp), metricsURL: fmt.Sprintf("http://127.0.0.1:%d", mp)}
	cmd := exec.Command(bin, "serve", "--policy", policyFile, "--kubeconfig", kubeconfig, "--redis-url", redisURL,
		"--webhook-listen", fmt.Sprintf("127.0.0.1:%d", wp), "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", mp),
		"--tls-cert-file", filepath.Join(certs, pki.CertFile), "--tls-private-key-file", filepath.Join(certs, pki.KeyFile), "--log-format", "text")
	cmd.Env = append(os.Environ(), "POD_NAME="+name)
	r.logFile = startProcess(t, name, cmd)
	framework.Eventually(t, 20*time.Second, name+" to serve /status", func(ctx context.Context) (bool, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.metricsURL+"/status", nil)
		resp, err := http.DefaultClient.Do(req)
		up := err == nil && resp.StatusCode == http.StatusOK
		if err == nil {
			_ = resp.Body.Close()
		}
		return up, nil // not up yet is not an error
	})
	return r
}

// review asks a replica directly, as the API server would, whether a dry-run
// delete of a pod would be admitted: dry runs are judged and charge nothing.
func review(t *testing.T, r *replica, caFile, ns, pod string) (allowed bool, message string) {
	t.Helper()
	dry := true
	ar := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID(fmt.Sprintf("review-%d", time.Now().UnixNano())),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Name:      pod,
			Namespace: ns,
			Operation: admissionv1.Delete,
			UserInfo:  authnv1.UserInfo{Username: "admin", Groups: []string{"system:masters"}},
			DryRun:    &dry,
		},
	}
	body, err := json.Marshal(ar)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS(t, caFile, "", "")}}
	defer client.CloseIdleConnections()
	resp, err := client.Post(r.webhookURL, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("review at %s: %v", r.name, err)
	}
	defer func() { _ = resp.Body.Close() }()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil {
		t.Fatalf("review at %s: %v (status %s)", r.name, err, resp.Status)
	}
	if out.Response.Result != nil {
		message = out.Response.Result.Message
	}
	return out.Response.Allowed, message
}

// runKD runs the kubedefender binary and returns its output and error.
func runKD(bin string, args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// overrideNameFrom reads the override's name from `breakglass grant`'s output.
func overrideNameFrom(t *testing.T, out string) string {
	t.Helper()
	const prefix = "override kubedefender-system/"
	i := strings.Index(out, prefix)
	if i < 0 {
		t.Fatalf("grant output lacks the override name:\n%s", out)
	}
	name, _, _ := strings.Cut(out[i+len(prefix):], " ")
	return name
}

// startProcess starts cmd in its own process group with its output in a log
// file, and stops it when t ends (SIGTERM, then SIGKILL after 10 s), printing
// the log when t failed. It returns the log file's path.
func startProcess(t *testing.T, name string, cmd *exec.Cmd) string {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("failed to start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		_ = logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("%s log:\n%s", name, b)
		}
	})
	return logFile
}
