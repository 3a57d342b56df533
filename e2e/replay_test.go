package e2e

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/proxy"
	"github.com/kubedefender/kubedefender/replay"
)

// replayAuditPolicy records every request with its stages (RequestReceived
// included, so the log has requests in several events) at level Metadata,
// and deletecollections with their response bodies, so that replay counts
// their items.
const replayAuditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: None
  resources: [{group: "", resources: [events]}, {group: coordination.k8s.io, resources: [leases]}]
- level: RequestResponse
  verbs: [deletecollection]
- level: Metadata
`

// replayPolicy: a pod-delete budget that trips a Manual breaker (so a
// denial is a 403 that kubectl does not retry), and a Shadow rate limit on
// lists by a custom User-Agent (a Shadow rule lets its requests through, so
// they reach the API server and its audit log).
const replayPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: replay-e2e}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete, deletecollection], resources: [pods], namespaces: [replay-e2e, replay-bulk]}
    per: [namespace]
    windows:
    - {window: 5m, limit: 3}
    breaker: {recovery: Manual}
  rateLimits:
  - name: agent-lists
    mode: Shadow
    match: {verbs: [list], resources: [pods], userAgents: ["^replay-agent/"]}
    per: [user, userAgent]
    qps: 1
    burst: 2
`

const (
	replayNS     = "replay-e2e"
	replayBulkNS = "replay-bulk"
)

// TestReplay checks that replaying the API server's own audit log against a
// policy reports exactly the denials the live webhook and proxy made.
func TestReplay(t *testing.T) {
	began := time.Now()
	bin := buildKubedefender(t)
	auditDir := t.TempDir()
	auditLog := filepath.Join(auditDir, "audit.log")
	auditPolicyFile := filepath.Join(auditDir, "audit-policy.yaml")
	writeTestFile(t, auditPolicyFile, replayAuditPolicy)
	// Given an API server that writes an audit log of every request
	cp := framework.Start(t, framework.Options{APIServerFlags: []string{
		"--audit-policy-file=" + auditPolicyFile, "--audit-log-path=" + auditLog,
		"--audit-log-format=json", "--audit-log-mode=blocking",
	}})
	// And KubeDefender's webhook and proxy running the policy
	d := startDefender(t, "replay", replayPolicy, defenderOptions{})
	d.register(t, cp, "replay", admissionregistrationv1.Fail)
	createNamespace(t, cp, replayNS, "replay")
	pods := createPods(t, cp.Client, replayNS, "victim", 6)
	createNamespace(t, cp, replayBulkNS, "replay")
	createPods(t, cp.Client, replayBulkNS, "bulk", 2)
	px := startReplayProxy(t, cp)
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	writeTestFile(t, policyFile, replayPolicy)

	// When an operator deletes pods one by one with kubectl
	kc := cp.AdminKubeconfig
	var deniedPods []string
	for _, p := range pods {
		_, errOut, err := cp.Kubectl(t, kc, "delete", "pod", p, "-n", replayNS, "--wait=false")
		switch {
		case err == nil:
		case strings.Contains(errOut, "denied the request"):
			deniedPods = append(deniedPods, p)
		default:
			t.Fatalf("kubectl delete pod %s: %v: %s", p, err, errOut)
		}
	}
	// And a controller deletes a collection of pods (the webhook charges each item)
	if err := cp.Client.CoreV1().Pods(replayBulkNS).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatalf("failed to delete the pods of %s: %v", replayBulkNS, err)
	}
	// And an agent lists pods through the proxy in two bursts
	var lists []listOutcome
	for burst := range 2 {
		for range 5 {
			lists = append(lists, px.list(t))
		}
		if burst == 0 {
			time.Sleep(3 * time.Second) // the bucket refills
		}
	}
	// Then the live webhook denied the deletes past the budget
	if len(deniedPods) != 3 {
		t.Fatalf("the live webhook denied %v, want the last 3 of %v", deniedPods, pods)
	}
	var warned []listOutcome
	for _, l := range lists {
		if l.warned {
			warned = append(warned, l)
		}
	}
	if len(warned) == 0 || warned[0].auditID == "" {
		t.Fatalf("the live proxy warned of no shadow denial with an Audit-Id: %+v", lists)
	}
	t.Logf("live: denied deletes %v; shadow-denied lists %d of %d", deniedPods, len(warned), len(lists))

	// When the audit log is replayed against the same policy
	var rep replay.Report
	if err := json.Unmarshal([]byte(kd(t, bin, "replay", "--policy", policyFile, "--audit-log", auditLog, "-o", "json")), &rep); err != nil {
		t.Fatalf("failed to decode the replay report: %v", err)
	}
	// Then it reports the same denials, first denied request included
	byName := map[string]*replay.RuleReport{}
	for _, r := range rep.Rules {
		byName[r.Name] = r
	}
	del, lst := byName["pod-deletes"], byName["agent-lists"]
	if del == nil || lst == nil {
		t.Fatalf("report lacks a rule: %+v", rep.Rules)
	}
	if del.Denied != int64(len(deniedPods)) || del.FirstDenied == nil || del.FirstDenied.Request.Name != deniedPods[0] {
		t.Errorf("replay: pod-deletes denied %d, first %+v; live denied %d, first %s", del.Denied, del.FirstDenied, len(deniedPods), deniedPods[0])
	}
	if dc := rep.DeleteCollections; dc.WithBody != 1 || dc.Items != 2 || dc.WithoutBody != 0 || del.Matched != int64(len(pods)+2) {
		t.Errorf("replay: deletecollections %+v, pod-deletes matched %d; want one with a body of 2 items, %d matched", dc, del.Matched, len(pods)+2)
	}
	if len(del.BreakerTrips) != 1 || del.BreakerTrips[0].Request.Name != deniedPods[0] {
		t.Errorf("replay: breaker trips %+v, want one, by the delete of %s", del.BreakerTrips, deniedPods[0])
	}
	if lst.Denied != int64(len(warned)) || lst.FirstDenied == nil || lst.FirstDenied.Request.AuditID != warned[0].auditID {
		t.Errorf("replay: agent-lists denied %d, first %+v; live shadow-denied %d, first %s", lst.Denied, lst.FirstDenied, len(warned), warned[0].auditID)
	}
	if lst.Matched != int64(len(lists)) {
		t.Errorf("replay: agent-lists matched %d, want the %d lists", lst.Matched, len(lists))
	}

	// When the policy --suggest prints is replayed against the same log
	suggested := filepath.Join(t.TempDir(), "suggested.yaml")
	writeTestFile(t, suggested, kd(t, bin, "replay", "--policy", policyFile, "--audit-log", auditLog, "--suggest"))
	kd(t, bin, "policy", "validate", suggested)
	var again replay.Report
	if err := json.Unmarshal([]byte(kd(t, bin, "replay", "--policy", suggested, "--audit-log", auditLog, "-o", "json")), &again); err != nil {
		t.Fatalf("failed to decode the replay report: %v", err)
	}
	// Then it denies nothing
	for _, r := range again.Rules {
		if r.Denied != 0 || len(r.BreakerTrips) != 0 {
			t.Errorf("the suggested policy's %s %q denied %d, tripped %d", r.Kind, r.Name, r.Denied, len(r.BreakerTrips))
		}
	}
	if os.Getenv("KUBEDEFENDER_REPLAY_FIXTURE") != "" {
		b, err := os.ReadFile(auditLog)
		if err != nil {
			t.Fatal(err)
		}
		writeTestFile(t, os.Getenv("KUBEDEFENDER_REPLAY_FIXTURE"), string(b))
	}
	t.Logf("replay e2e took %s", time.Since(began).Round(time.Millisecond))
}

type listOutcome struct {
	auditID string
	warned  bool
}

type replayProxy struct {
	url    string
	mu     sync.Mutex
	last   listOutcome
	client kubernetes.Interface
}

// startReplayProxy serves a front-proxy KubeDefender proxy with replayPolicy
// in front of the API server.
func startReplayProxy(t *testing.T, cp *framework.ControlPlane) *replayProxy {
	t.Helper()
	compiled, err := policy.Parse("replay-e2e.yaml", []byte(replayPolicy))
	if err != nil {
		t.Fatalf("failed to parse the policy: %v", err)
	}
	engine, err := limiter.NewEngine(limiter.EngineConfig{Policy: compiled})
	if err != nil {
		t.Fatalf("failed to build the engine: %v", err)
	}
	cert, key := cp.IssueServingCert(t, "replay-proxy", "127.0.0.1")
	u, _ := url.Parse(cp.URL)
	logs := &lockedBuffer{}
	p, err := proxy.New(proxy.Config{
		Upstream: u, UpstreamCAFile: cp.CACertFile, TLSCertFile: cert, TLSKeyFile: key,
		AuthMode: proxy.AuthFrontProxy, ClientCAFile: cp.CACertFile,
		FrontProxyCertFile: cp.FrontProxyClientCertFile, FrontProxyKeyFile: cp.FrontProxyClientKeyFile,
		TokenReviewClient: cp.Client.AuthenticationV1(),
		Engine:            engine, Policy: compiled,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	if err != nil {
		t.Fatalf("failed to build the proxy: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("failed to listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy stopped with %v", err)
		}
		if t.Failed() {
			t.Logf("---- proxy log ----\n%s", logs.String())
		}
	})
	rp := &replayProxy{url: "https://" + ln.Addr().String()}
	cfg := restVia(cp.Config, rp.url)
	cfg.UserAgent = "replay-agent/1.0"
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(r)
			if err == nil {
				rp.mu.Lock()
				rp.last = listOutcome{auditID: resp.Header.Get("Audit-Id"), warned: strings.Contains(resp.Header.Get("Warning"), "agent-lists")}
				rp.mu.Unlock()
			}
			return resp, err
		})
	}
	rp.client = framework.ClientFor(t, cfg)
	return rp
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// list lists the pods of replayNS once through the proxy and says whether
// the proxy warned of a shadow denial.
func (p *replayProxy) list(t *testing.T) listOutcome {
	t.Helper()
	if _, err := p.client.CoreV1().Pods(replayNS).List(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatalf("failed to list pods through the proxy: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}
