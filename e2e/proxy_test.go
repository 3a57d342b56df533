package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/internal/logtest"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/proxy"
	"github.com/kubedefender/kubedefender/serving"
)

// proxyPolicy is the policy of the proxy scenarios: a rate limit on one
// user's kubectl, one on a flooding user agent, and a one-seat-per-flow
// priority level for the fairness scenario.
const proxyPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: proxy-e2e}
spec:
  rateLimits:
  - name: dave-kubectl
    match: {users: [dave], userAgents: ["^kubectl/"]}
    per: [user, userAgent]
    qps: 2
    burst: 2
  - name: flood-agents
    match: {verbs: [get, list], userAgents: ["^e2e-flood/"]}
    per: [userAgent]
    qps: 5
    burst: 5
  priorityLevels:
  - {name: exempt, exempt: true}
  - {name: shared, shares: 1, queues: 64, handSize: 1, queueLengthLimit: 100}
  - {name: catch-all, shares: 39, queues: 32, handSize: 4, queueLengthLimit: 100}
  flowSchemas:
  - {name: masters, precedence: 100, priorityLevel: exempt, match: {groups: ["system:masters"]}}
  - {name: fairness, precedence: 200, priorityLevel: shared, distinguisher: ByUser, match: {users: [flooder, steady]}}
  concurrency: 40
`

const proxyNS = "proxy-e2e"

// runningProxy is a proxy served in this process for one scenario.
type runningProxy struct {
	URL      string
	Proxy    *proxy.Proxy
	Registry *prometheus.Registry
	Logs     *logtest.Buffer
	stop     func()
}

// startProxy serves a KubeDefender proxy in front of upstream (the API
// server unless given) and stops it when t ends.
func startProxy(t *testing.T, cp *framework.ControlPlane, mode proxy.AuthMode, upstream string) *runningProxy {
	t.Helper()
	return startProxyWith(t, cp, mode, upstream, nil)
}

// startProxyWith is startProxy with its configuration changed by change
// (if not nil) before the proxy is built.
func startProxyWith(t *testing.T, cp *framework.ControlPlane, mode proxy.AuthMode, upstream string, change func(*proxy.Config)) *runningProxy {
	t.Helper()
	if upstream == "" {
		upstream = cp.URL
	}
	compiled, engine := parsePolicyEngine(t, "proxy-e2e.yaml", proxyPolicy)
	cert, key := cp.IssueServingCert(t, "proxy-"+string(mode)+fmt.Sprint(time.Now().UnixNano()), "127.0.0.1")
	u, _ := url.Parse(upstream)
	rp := &runningProxy{Registry: prometheus.NewRegistry(), Logs: &logtest.Buffer{}}
	cfg := proxy.Config{
		Upstream: u, UpstreamCAFile: cp.CACertFile, Serving: servingPair(t, cert, key),
		AuthMode: mode, ClientCAFile: cp.CACertFile,
		FrontProxyCertFile: cp.FrontProxyClientCertFile, FrontProxyKeyFile: cp.FrontProxyClientKeyFile,
		TokenReviewClient: cp.Client.AuthenticationV1(),
		Engine:            engine, Policy: compiled,
		MaxQueueWait: 20 * time.Second,
		Logger:       slog.New(slog.NewJSONHandler(rp.Logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:   rp.Registry,
	}
	if change != nil {
		change(&cfg)
	}
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatalf("failed to build the proxy: %v", err)
	}
	rp.URL, rp.stop = serveProxy(t, p)
	t.Cleanup(rp.stop)
	rp.Proxy = p
	return rp
}

// parsePolicyEngine compiles policyYAML (named name in errors) and builds an
// in-memory engine on it; either failing fails t.
func parsePolicyEngine(t *testing.T, name, policyYAML string) (*policy.Compiled, *limiter.Engine) {
	t.Helper()
	compiled, err := policy.Parse(name, []byte(policyYAML))
	if err != nil {
		t.Fatalf("failed to parse the policy %s: %v", name, err)
	}
	engine, err := limiter.NewEngine(limiter.EngineConfig{Policy: compiled})
	if err != nil {
		t.Fatalf("failed to build the engine: %v", err)
	}
	return compiled, engine
}

// servingPair loads a proxy's serving pair.
func servingPair(t *testing.T, certFile, keyFile string) *serving.CertKey {
	t.Helper()
	c, err := serving.NewCertKey(serving.CertKeyConfig{Purpose: "serving", CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatalf("failed to load the serving pair: %v", err)
	}
	return c
}

// serveProxy serves p on a loopback port, as serve does (its listener and
// its certificate reloads), and returns its URL and stop, which ends the
// serving (once, however often it is called) and fails t if the listener or
// the reloads returned an error. The caller arranges for stop to run.
func serveProxy(t *testing.T, p *proxy.Proxy) (proxyURL string, stop func()) {
	t.Helper()
	sc, err := p.ServerConfig("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := serving.New(sc)
	if err != nil {
		t.Fatalf("failed to listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served, reloaded := make(chan error, 1), make(chan error, 1)
	go func() { served <- srv.Run(ctx) }()
	go func() { reloaded <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := errors.Join(<-served, <-reloaded); err != nil {
				t.Errorf("proxy stopped with %v", err)
			}
		})
	}
	return "https://" + srv.Addr().String(), stop
}

// createEditorRole creates ClusterRole name, which may do anything to config
// maps and pods.
func createEditorRole(t *testing.T, cp *framework.ControlPlane, name string) {
	t.Helper()
	_, err := cp.Client.RbacV1().ClusterRoles().Create(t.Context(), &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps", "pods"}, Verbs: []string{"*"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("failed to create the role %s: %v", name, err)
	}
}

// bindClusterRole grants ClusterRole role to users in ns, as RoleBinding
// name.
func bindClusterRole(t *testing.T, cp *framework.ControlPlane, ns, name, role string, users ...string) {
	t.Helper()
	subjects := make([]rbacv1.Subject, 0, len(users))
	for _, u := range users {
		subjects = append(subjects, rbacv1.Subject{Kind: rbacv1.UserKind, Name: u})
	}
	_, err := cp.Client.RbacV1().RoleBindings(ns).Create(t.Context(), &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   subjects,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("failed to bind %s to %v in %s: %v", role, users, ns, err)
	}
}

// viaProxy rewrites a kubeconfig to point at the proxy and returns its path.
func viaProxy(t *testing.T, kubeconfig, proxyURL string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatalf("failed to load %s: %v", kubeconfig, err)
	}
	for _, c := range cfg.Clusters {
		c.Server = proxyURL
	}
	out := filepath.Join(t.TempDir(), filepath.Base(kubeconfig))
	if err := clientcmd.WriteToFile(*cfg, out); err != nil {
		t.Fatalf("failed to write %s: %v", out, err)
	}
	return out
}

func restVia(cfg *rest.Config, proxyURL string) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Host = proxyURL
	return c
}

// TestProxy runs the proxy scenarios against one real control plane, each
// with proxies of its own in this process.
func TestProxy(t *testing.T) {
	began := time.Now()
	cp := framework.Start(t, framework.Options{Users: []framework.User{{Name: "dave"}, {Name: "flooder"}, {Name: "steady"}}})
	cp.CreateNamespace(t, proxyNS)
	// Given alice (token), carol (certificate), dave, flooder and steady may
	// edit config maps in proxyNS, and bob may do nothing
	createEditorRole(t, cp, "proxy-e2e-editor")
	bindClusterRole(t, cp, proxyNS, "proxy-e2e-editors", "proxy-e2e-editor", "alice", "carol", "dave", "flooder", "steady")
	front := startProxy(t, cp, proxy.AuthFrontProxy, "")
	pass := startProxy(t, cp, proxy.AuthPassthrough, "")

	t.Run("kubectl works through the proxy and RBAC still applies", func(t *testing.T) { kubectlScenario(t, cp, front, pass) })
	t.Run("spoofed identity headers gain nothing", func(t *testing.T) { spoofScenario(t, cp, front, pass) })
	t.Run("watch events arrive promptly", func(t *testing.T) { watchDelayScenario(t, cp, front) })
	t.Run("a user agent over its QPS gets 429 and clients back off and succeed", func(t *testing.T) { rateLimitScenario(t, cp, front) })
	t.Run("a flooding flow does not starve another flow at its level", func(t *testing.T) { fairnessScenario(t, cp, front) })
	t.Run("the API server authenticates token users itself through the front proxy", func(t *testing.T) { tokenScenario(t, cp, front) })
	t.Run("SPDY and WebSocket upgrades stream through the proxy", func(t *testing.T) { upgradeScenario(t, cp) })
	t.Run("an upstream dying mid-watch ends the watch promptly and leaks nothing", func(t *testing.T) { upstreamDeathScenario(t, cp) })
	t.Run("logs hold no bearer tokens", func(t *testing.T) {
		for _, rp := range []*runningProxy{front, pass} {
			logs := rp.Logs.String()
			for user, tok := range cp.Tokens {
				if strings.Contains(logs, tok) {
					t.Errorf("the proxy logs hold the token of %s", user)
				}
			}
		}
	})
	t.Logf("proxy e2e took %s", time.Since(began).Round(time.Millisecond))
}

func kubectlScenario(t *testing.T, cp *framework.ControlPlane, front, pass *runningProxy) {
	users := []struct {
		name       string
		kubeconfig string
	}{
		{name: "token user alice", kubeconfig: cp.TokenKubeconfig(t, framework.UserAlice)},
		{name: "certificate user carol", kubeconfig: cp.CertKubeconfig(t, "carol")},
	}
	for _, rp := range []*runningProxy{front, pass} {
		mode := map[*runningProxy]string{front: "front-proxy", pass: "passthrough"}[rp]
		for i, u := range users {
			t.Run(mode+" "+u.name, func(t *testing.T) {
				kc := viaProxy(t, u.kubeconfig, rp.URL)
				name := fmt.Sprintf("cm-%s-%d", mode, i)
				manifest := filepath.Join(t.TempDir(), "cm.yaml")
				if err := os.WriteFile(manifest, []byte(fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s, namespace: %s}\ndata: {k: v}\n", name, proxyNS)), 0o600); err != nil {
					t.Fatal(err)
				}
				// Given a watch through the proxy
				w := startKubectlWatch(t, kc, "configmaps", "-n", proxyNS, "-o", "name")
				// When the user applies, gets and deletes a config map through the proxy
				for _, args := range [][]string{{"apply", "-f", manifest}, {"get", "configmap", name, "-n", proxyNS, "-o", "name"}, {"delete", "-f", manifest}} {
					out, errOut, err := cp.Kubectl(t, kc, args...)
					if err != nil {
						t.Fatalf("kubectl %v: %v: %s", args, err, errOut)
					}
					t.Logf("kubectl %s: %s", args[0], strings.TrimSpace(out))
				}
				// Then the watch saw it
				w.waitFor(t, "configmap/"+name)
				// And RBAC still applies: a namespace the user may not read
				_, errOut, err := cp.Kubectl(t, kc, "get", "secrets", "-n", "kube-system")
				if err == nil || !strings.Contains(errOut, "forbidden") {
					t.Errorf("kubectl get secrets -n kube-system: err=%v stderr=%q, want forbidden", err, errOut)
				}
			})
		}
	}
	t.Run("bob is forbidden through both proxies", func(t *testing.T) {
		for _, rp := range []*runningProxy{front, pass} {
			_, errOut, err := cp.Kubectl(t, viaProxy(t, cp.TokenKubeconfig(t, framework.UserBob), rp.URL), "get", "configmaps", "-n", proxyNS)
			if err == nil || !strings.Contains(errOut, `User "bob" cannot list resource "configmaps"`) {
				t.Errorf("kubectl as bob via %s: err=%v stderr=%q, want forbidden", rp.URL, err, errOut)
			}
		}
	})
}

// kubectlWatch is `kubectl get -w` running in the background.
type kubectlWatch struct {
	mu    sync.Mutex
	lines []string
	seen  chan struct{}
}

func startKubectlWatch(t *testing.T, kubeconfig, resource string, args ...string) *kubectlWatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	cmd := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig=" + kubeconfig, "get", resource, "-w", "--watch-only"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr logtest.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("failed to start kubectl get -w: %v", err)
	}
	w := &kubectlWatch{seen: make(chan struct{}, 100)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			w.mu.Lock()
			w.lines = append(w.lines, strings.TrimSpace(sc.Text()))
			w.mu.Unlock()
			w.seen <- struct{}{}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("kubectl get -w stderr: %s", stderr.String())
		}
	})
	// kubectl prints nothing until an event; give it a moment to connect.
	time.Sleep(1500 * time.Millisecond)
	return w
}

func (w *kubectlWatch) waitFor(t *testing.T, line string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		w.mu.Lock()
		ok := slices.Contains(w.lines, line)
		lines := slices.Clone(w.lines)
		w.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-w.seen:
		case <-deadline:
			t.Fatalf("kubectl get -w printed %q, want %q among them", lines, line)
		}
	}
}

// headerAdder adds headers to every request (a client lying about itself).
type headerAdder struct {
	rt http.RoundTripper
	h  http.Header
}

func (a headerAdder) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range a.h {
		r.Header[k] = v
	}
	return a.rt.RoundTrip(r)
}

func spoofScenario(t *testing.T, cp *framework.ControlPlane, front, pass *runningProxy) {
	spoof := http.Header{"X-Remote-User": {"system:admin"}, "X-Remote-Group": {"system:masters"}, "X-Remote-Extra-Scopes": {"all"}}
	anonymous := &rest.Config{Host: cp.URL, TLSClientConfig: rest.TLSClientConfig{CAFile: cp.CACertFile}}
	for _, tc := range []struct {
		name     string
		rp       *runningProxy
		cfg      *rest.Config
		wantCode int
	}{
		{name: "front-proxy, bob's token", rp: front, cfg: cp.TokenConfig(t, framework.UserBob), wantCode: 403},
		{name: "front-proxy, no credentials", rp: front, cfg: anonymous, wantCode: 401},
		{name: "passthrough, bob's token", rp: pass, cfg: cp.TokenConfig(t, framework.UserBob), wantCode: 403},
		{name: "passthrough, no credentials", rp: pass, cfg: anonymous, wantCode: 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Given a client that claims to be system:admin in system:masters
			cfg := restVia(tc.cfg, tc.rp.URL)
			cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return headerAdder{rt: rt, h: spoof} }
			// When it reads secrets in kube-system
			_, err := framework.ClientFor(t, cfg).CoreV1().Secrets("kube-system").List(t.Context(), metav1.ListOptions{})
			// Then it is refused as who it really is
			var se apierrors.APIStatus
			if !apierrorsAs(err, &se) || int(se.Status().Code) != tc.wantCode {
				t.Fatalf("list secrets: %v, want code %d", err, tc.wantCode)
			}
			t.Logf("refused: %v", err)
		})
	}
}

func apierrorsAs(err error, target *apierrors.APIStatus) bool {
	if s, ok := err.(apierrors.APIStatus); ok {
		*target = s
		return true
	}
	return false
}

func watchDelayScenario(t *testing.T, cp *framework.ControlPlane, front *runningProxy) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// Given a watch through the proxy and one straight at the API server
	alice := cp.TokenConfig(t, framework.UserAlice)
	viaProxy := framework.ClientFor(t, restVia(alice, front.URL))
	direct := framework.ClientFor(t, alice)
	opts := metav1.ListOptions{LabelSelector: "delay=probe"}
	wp, err := viaProxy.CoreV1().ConfigMaps(proxyNS).Watch(ctx, opts)
	if err != nil {
		t.Fatalf("failed to watch through the proxy: %v", err)
	}
	defer wp.Stop()
	wd, err := direct.CoreV1().ConfigMaps(proxyNS).Watch(ctx, opts)
	if err != nil {
		t.Fatalf("failed to watch directly: %v", err)
	}
	defer wd.Stop()
	// When config maps are created one after another
	const n = 20
	var viaDelays, added []time.Duration
	for i := range n {
		name := fmt.Sprintf("delay-%d", i)
		created := time.Now()
		if _, err := cp.Client.CoreV1().ConfigMaps(proxyNS).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"delay": "probe"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("failed to create %s: %v", name, err)
		}
		tp, td := awaitAdded(t, wp, name), awaitAdded(t, wd, name)
		viaDelays = append(viaDelays, tp.Sub(created))
		added = append(added, tp.Sub(td))
		time.Sleep(20 * time.Millisecond)
	}
	// Then each arrives through the proxy promptly
	slices.Sort(viaDelays)
	slices.Sort(added)
	// added compares arrival with the direct watch read afterwards: a
	// positive value bounds the proxy's share, a negative one means the
	// direct event was already waiting when the proxied one arrived.
	t.Logf("watch event delay through the proxy (from the create call): p50 %s, max %s; proxied arrival minus direct read: max %s",
		viaDelays[n/2], viaDelays[n-1], added[n-1])
	if viaDelays[n-1] > time.Second {
		t.Errorf("slowest event took %s through the proxy, want at most 1s", viaDelays[n-1])
	}
}

func awaitAdded(t *testing.T, w watch.Interface, name string) time.Time {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("watch closed waiting for %s", name)
			}
			if cm, isCM := ev.Object.(*corev1.ConfigMap); isCM && ev.Type == watch.Added && cm.Name == name {
				return time.Now()
			}
		case <-timeout:
			t.Fatalf("no ADDED event for %s", name)
		}
	}
}

// statusCounter counts the responses of each code a client gets, retries included.
type statusCounter struct {
	rt     http.RoundTripper
	counts sync.Map // int -> *atomic.Int64
}

func (s *statusCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.rt.RoundTrip(r)
	if err == nil {
		v, _ := s.counts.LoadOrStore(resp.StatusCode, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	return resp, err
}

func (s *statusCounter) count(code int) int64 {
	if v, ok := s.counts.Load(code); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

func rateLimitScenario(t *testing.T, cp *framework.ControlPlane, front *runningProxy) {
	t.Run("client-go honours Retry-After and every request succeeds", func(t *testing.T) {
		// Given a client-go client whose user agent is limited to 5 QPS
		counter := &statusCounter{}
		cfg := restVia(cp.TokenConfig(t, framework.UserAlice), front.URL)
		cfg.UserAgent, cfg.QPS, cfg.Burst = "e2e-flood/1.0", 1000, 1000
		cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { counter.rt = rt; return counter }
		c := framework.ClientFor(t, cfg)
		// When it sends 15 GETs at once
		began := time.Now()
		var wg sync.WaitGroup
		var failures atomic.Int64
		for i := range 15 {
			wg.Go(func() {
				if _, err := c.CoreV1().ConfigMaps(proxyNS).List(t.Context(), metav1.ListOptions{Limit: 1}); err != nil {
					failures.Add(1)
					t.Logf("request %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		// Then some were told 429, and all succeeded after backing off
		t.Logf("15 GETs took %s: %d answered 429 on the way, %d answered 200", time.Since(began).Round(time.Millisecond), counter.count(429), counter.count(200))
		if counter.count(429) == 0 {
			t.Errorf("no 429 seen; the rate limit did not apply")
		}
		if failures.Load() != 0 {
			t.Errorf("%d requests failed; client-go should retry 429 with Retry-After", failures.Load())
		}
	})
	t.Run("kubectl retries a 429 and succeeds", func(t *testing.T) {
		// Given dave's kubectl is limited to 2 QPS with a burst of 2
		kc := viaProxy(t, cp.TokenKubeconfig(t, "dave"), front.URL)
		before := pxCounter(t, front.Registry, "kubedefender_proxy_rejections_total", map[string]string{"rule": "dave-kubectl"})
		// When kubectl runs several times in a row
		for i := range 3 {
			if _, errOut, err := cp.Kubectl(t, kc, "get", "configmaps", "-n", proxyNS, "-o", "name"); err != nil {
				t.Fatalf("kubectl run %d: %v: %s", i, err, errOut)
			}
		}
		// Then the proxy refused some of its requests, and kubectl still succeeded
		after := pxCounter(t, front.Registry, "kubedefender_proxy_rejections_total", map[string]string{"rule": "dave-kubectl"})
		t.Logf("kubectl was refused %v times and succeeded each run", after-before)
		if after == before {
			t.Errorf("kubectl was never refused; the limit did not apply")
		}
	})
}

func pxCounter(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("failed to gather metrics: %v", err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

func fairnessScenario(t *testing.T, cp *framework.ControlPlane, front *runningProxy) {
	ctx := t.Context()
	// Given 50 config maps to list, and the "shared" level (1 seat) that
	// flooder and steady share
	for i := range 50 {
		_, err := cp.Client.CoreV1().ConfigMaps(proxyNS).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("fair-%02d", i), Labels: map[string]string{"fair": "yes"}},
			Data:       map[string]string{"payload": strings.Repeat("x", 512)},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("failed to create config map %d: %v", i, err)
		}
	}
	client := func(user string) kubernetes.Interface {
		cfg := restVia(cp.TokenConfig(t, user), front.URL)
		cfg.QPS, cfg.Burst = -1, 0
		return framework.ClientFor(t, cfg)
	}
	steady := client("steady")
	// The flooder reads and discards raw responses: its own decoding would
	// only compete for this machine's CPU, which is not what is measured.
	floodCfg := restVia(cp.TokenConfig(t, "flooder"), front.URL)
	floodRT, err := rest.TransportFor(floodCfg)
	if err != nil {
		t.Fatalf("failed to build the flooder's transport: %v", err)
	}
	floodURL := front.URL + "/api/v1/namespaces/" + proxyNS + "/configmaps?labelSelector=fair%3Dyes"
	list := func(c kubernetes.Interface) (time.Duration, error) {
		began := time.Now()
		_, err := c.CoreV1().ConfigMaps(proxyNS).List(ctx, metav1.ListOptions{LabelSelector: "fair=yes"})
		return time.Since(began), err
	}
	sample := func(n int, into *[]time.Duration) {
		for range n {
			d, err := list(steady)
			if err != nil {
				t.Fatalf("steady list: %v", err)
			}
			*into = append(*into, d)
		}
	}
	pct := func(lat []time.Duration) (p50, p90, p99 time.Duration) {
		slices.Sort(lat)
		return lat[len(lat)/2], lat[len(lat)*9/10], lat[len(lat)*99/100]
	}
	for range 5 { // warm up connections and caches
		_, _ = list(steady)
	}
	// When steady lists alone and while flooder floods with 8 concurrent
	// LIST loops, in alternating rounds so that the machine's own noise
	// (other builds and tests) falls on both alike
	var aloneLat, floodLat []time.Duration
	var flooded atomic.Int64
	for range 5 {
		sample(40, &aloneLat)
		floodCtx, stopFlood := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for floodCtx.Err() == nil {
					req, _ := http.NewRequestWithContext(floodCtx, http.MethodGet, floodURL, nil)
					resp, err := floodRT.RoundTrip(req)
					if err != nil {
						continue
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						flooded.Add(1)
					}
				}
			})
		}
		time.Sleep(100 * time.Millisecond)
		sample(40, &floodLat)
		stopFlood()
		wg.Wait()
	}
	a50, a90, alone := pct(aloneLat)
	f50, f90, withFlood := pct(floodLat)
	// Then steady's p99 rises by at most 5x
	ratio := float64(withFlood) / float64(alone)
	t.Logf("steady LIST p50/p90/p99: alone %s/%s/%s, during flood %s/%s/%s (p50 ratio %.2fx, p99 ratio %.2fx); the flooder completed %d LISTs",
		a50.Round(time.Microsecond), a90.Round(time.Microsecond), alone.Round(time.Microsecond),
		f50.Round(time.Microsecond), f90.Round(time.Microsecond), withFlood.Round(time.Microsecond), float64(f50)/float64(a50), ratio, flooded.Load())
	if ratio > 5 {
		t.Errorf("steady's p99 rose %.2fx under the flood, want at most 5x", ratio)
	}
}

// relay forwards TCP connections to target until killed: an upstream the
// test can make die abruptly without touching the shared API server.
type relay struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, c, u)
			r.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
	t.Cleanup(r.kill)
	return r
}

// kill closes the listener and resets every connection, as a crashed
// process would.
func (r *relay) kill() {
	_ = r.ln.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
	r.conns = nil
}

func upstreamDeathScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a proxy whose upstream runs through a relay, and five watches through it
	apiHost, _ := url.Parse(cp.URL)
	rl := startRelay(t, apiHost.Host)
	rp := startProxy(t, cp, proxy.AuthFrontProxy, "https://"+rl.ln.Addr().String())
	cfg := restVia(cp.TokenConfig(t, framework.UserAlice), rp.URL)
	c := framework.ClientFor(t, cfg)
	if _, err := c.CoreV1().ConfigMaps(proxyNS).List(t.Context(), metav1.ListOptions{Limit: 1}); err != nil {
		t.Fatalf("failed to list through the relay: %v", err)
	}
	runtime.GC()
	baseline := runtime.NumGoroutine()
	var watches []watch.Interface
	for range 5 {
		w, err := c.CoreV1().ConfigMaps(proxyNS).Watch(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatalf("failed to watch: %v", err)
		}
		watches = append(watches, w)
	}
	time.Sleep(300 * time.Millisecond)
	// When the upstream dies
	killed := time.Now()
	rl.kill()
	// Then every watch ends promptly
	for i, w := range watches {
		select {
		case <-drained(w):
		case <-time.After(5 * time.Second):
			t.Fatalf("watch %d still open 5s after the upstream died", i)
		}
	}
	t.Logf("all watches ended %s after the upstream died", time.Since(killed).Round(time.Millisecond))
	// And the next request gets a prompt 503
	began := time.Now()
	_, err := c.CoreV1().ConfigMaps(proxyNS).List(t.Context(), metav1.ListOptions{Limit: 1})
	if !apierrors.IsServiceUnavailable(err) || time.Since(began) > 2*time.Second {
		t.Errorf("list after the upstream died: %v after %s, want a prompt 503", err, time.Since(began))
	}
	t.Logf("a list after the upstream died failed in %s: %v", time.Since(began).Round(time.Millisecond), err)
	// And the goroutines go back to the baseline
	for _, w := range watches {
		w.Stop()
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		runtime.GC()
		n := runtime.NumGoroutine()
		if n <= baseline+2 {
			t.Logf("goroutines: %d before the watches, %d after the upstream died", baseline, n)
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d, baseline %d; dump:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// drained closes when w's result channel is closed.
func drained(w watch.Interface) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		for range w.ResultChan() {
		}
		close(done)
	}()
	return done
}
