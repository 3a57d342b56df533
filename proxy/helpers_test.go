package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/internal/logtest"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/pki"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/serving"
)

// testCA is a certificate authority for tests, its certificate in file.
type testCA struct {
	*pki.CA
	file string
}

func newTestCA(t testing.TB, dir, name string) *testCA {
	t.Helper()
	ca, err := pki.NewCA(pki.CAOptions{CommonName: name, Validity: 24 * time.Hour})
	if err != nil {
		t.Fatalf("failed to create CA: %v", err)
	}
	file := filepath.Join(dir, name+".crt")
	if err := os.WriteFile(file, ca.CertPEM, 0o600); err != nil {
		t.Fatalf("failed to write %s: %v", file, err)
	}
	return &testCA{CA: ca, file: file}
}

// issue signs a leaf: a serving pair for 127.0.0.1 and localhost, or a client
// pair carrying groups as organizations. It returns the pair's files and the
// tls.Certificate.
func (ca *testCA) issue(t testing.TB, dir, cn string, groups []string, server bool) (certFile, keyFile string, pair tls.Certificate) {
	t.Helper()
	var p *pki.Pair
	var err error
	if server {
		p, err = ca.Issue(pki.ServingOptions{CommonName: cn, DNSNames: []string{"localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	} else {
		p, err = ca.IssueClient(pki.ClientOptions{CommonName: cn, Groups: groups})
	}
	if err != nil {
		t.Fatalf("failed to issue %s: %v", cn, err)
	}
	certFile, keyFile = filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	if err := p.Write(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	if pair, err = tls.X509KeyPair(p.CertPEM, p.KeyPEM); err != nil {
		t.Fatalf("failed to load %s: %v", cn, err)
	}
	return certFile, keyFile, pair
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// testPolicy is the policy of a test's proxy on disk, watched as serve
// watches it: the engine and the proxy subscribe to its reloads.
type testPolicy struct {
	file    string
	watcher *policy.Watcher
}

func newTestPolicy(t testing.TB, dir, yaml string) *testPolicy {
	t.Helper()
	file := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := policy.NewWatcher(policy.WatcherConfig{Path: file})
	if err != nil {
		t.Fatalf("failed to load the test policy: %v", err)
	}
	return &testPolicy{file: file, watcher: w}
}

// push writes yaml as the policy and reloads it.
func (s *testPolicy) push(t testing.TB, yaml string) {
	t.Helper()
	if err := os.WriteFile(s.file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.watcher.Reload(); err != nil {
		t.Fatalf("failed to reload the test policy: %v", err)
	}
}

func mustPolicy(t testing.TB, yaml string) *policy.Compiled {
	t.Helper()
	c, err := policy.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("failed to parse the test policy: %v", err)
	}
	return c
}

// env is a proxy in front of a test upstream, with its PKI.
type env struct {
	dir        string
	clientCA   *testCA
	frontCA    *testCA
	serverCA   *testCA
	upstream   *httptest.Server
	proxyURL   string
	proxy      *Proxy
	policy     *testPolicy
	engine     *limiter.Engine
	logs       *logtest.Buffer
	registry   *prometheus.Registry
	cancel     context.CancelFunc
	served     chan error
	upstreamMu sync.Mutex
	// lastUpstream is the last request the upstream saw.
	lastUpstream *http.Request
}

type envOptions struct {
	policy   string
	mode     AuthMode
	upstream http.Handler
	tokens   map[string]string // token -> user (TokenReview answers)
	budgets  bool
	maxWait  time.Duration
	noFront  bool
	// bodyReadTimeout is Config.BodyReadTimeout (0: the default).
	bodyReadTimeout time.Duration
	// clock is Config.Clock (nil: real time).
	clock *clocktesting.FakeClock
}

const basePolicy = `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  rateLimits:
  - name: flood-gets
    match: {verbs: [get, list], resources: ["*"], userAgents: ["^flood/"]}
    per: [user, userAgent]
    qps: 1
    burst: 2
  priorityLevels:
  - {name: exempt, exempt: true}
  - {name: workload, shares: 1, queues: 4, handSize: 2, queueLengthLimit: 2}
  - {name: catch-all, shares: 1, queues: 8, handSize: 2, queueLengthLimit: 50}
  flowSchemas:
  - {name: masters, precedence: 100, priorityLevel: exempt, match: {groups: ["system:masters"]}}
  - {name: slow, precedence: 200, priorityLevel: workload, match: {userAgents: ["^slow/"]}}
  concurrency: 2
`

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{dir: dir, logs: &logtest.Buffer{}, registry: prometheus.NewRegistry()}
	e.clientCA = newTestCA(t, dir, "client-ca")
	e.frontCA = newTestCA(t, dir, "front-proxy-ca")
	e.serverCA = newTestCA(t, dir, "server-ca")
	if o.policy == "" {
		o.policy = basePolicy
	}
	if o.mode == "" {
		o.mode = AuthFrontProxy
	}
	if o.upstream == nil {
		o.upstream = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"kind":"Status","status":"Success"}`))
		})
	}
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.upstreamMu.Lock()
		e.lastUpstream = r.Clone(context.Background())
		e.upstreamMu.Unlock()
		o.upstream.ServeHTTP(w, r)
	}))
	_, _, upPair := e.serverCA.issue(t, dir, "upstream", nil, true)
	up.TLS = &tls.Config{Certificates: []tls.Certificate{upPair}, ClientAuth: tls.RequestClientCert}
	up.EnableHTTP2 = true
	up.StartTLS()
	t.Cleanup(up.Close)
	e.upstream = up

	servingCert, servingKey, _ := e.serverCA.issue(t, dir, "proxy", nil, true)
	e.policy = newTestPolicy(t, dir, o.policy)
	eng, err := limiter.NewEngine(limiter.EngineConfig{Policy: e.policy.watcher.Current()})
	if err != nil {
		t.Fatalf("failed to build the engine: %v", err)
	}
	e.policy.watcher.Subscribe("engine", eng)
	e.engine = eng
	u, _ := url.Parse(up.URL)
	cfg := Config{
		Upstream: u, UpstreamCAFile: e.serverCA.file, Serving: servingPair(t, servingCert, servingKey),
		AuthMode: o.mode, ClientCAFile: e.clientCA.file, Engine: eng, Policy: e.policy.watcher.Current(), BudgetsAtProxy: o.budgets,
		MaxQueueWait: o.maxWait, BodyReadTimeout: o.bodyReadTimeout, Registerer: e.registry,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if !o.noFront {
		cfg.FrontProxyCertFile, cfg.FrontProxyKeyFile, _ = e.frontCA.issue(t, dir, "front-proxy-client", nil, false)
	}
	if o.clock != nil {
		cfg.Clock = o.clock
	}
	if o.tokens != nil {
		cfg.TokenReviewClient = tokenReviewServer(t, o.tokens)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("failed to build the proxy: %v", err)
	}
	e.proxy = p
	e.policy.watcher.Subscribe("proxy", p)
	sc, err := p.ServerConfig("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := serving.New(sc)
	if err != nil {
		t.Fatalf("failed to listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel, e.served = cancel, make(chan error, 2)
	go func() { e.served <- srv.Run(ctx) }()
	go func() { e.served <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-e.served
		<-e.served
	})
	e.proxyURL = "https://" + srv.Addr().String()
	return e
}

// servingPair loads the proxy's serving pair.
func servingPair(t testing.TB, certFile, keyFile string) *serving.CertKey {
	t.Helper()
	c, err := serving.NewCertKey(serving.CertKeyConfig{Purpose: "serving", CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// client returns an HTTP client trusting the proxy, presenting pair if given.
func (e *env) client(pair *tls.Certificate, h2 bool) *http.Client {
	tc := &tls.Config{RootCAs: e.serverCA.pool(), MinVersion: tls.VersionTLS12}
	if pair != nil {
		tc.Certificates = []tls.Certificate{*pair}
	}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: h2, MaxIdleConnsPerHost: 100}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func (e *env) userCert(t testing.TB, user string, groups ...string) *tls.Certificate {
	t.Helper()
	_, _, pair := e.clientCA.issue(t, e.dir, user, groups, false)
	return &pair
}

func (e *env) upstreamSaw() *http.Request {
	e.upstreamMu.Lock()
	defer e.upstreamMu.Unlock()
	return e.lastUpstream
}

// bodyRecorder is an upstream that answers {} and keeps, in order, the body
// of every request it gets.
type bodyRecorder struct {
	mu     sync.Mutex
	bodies []string
}

func (u *bodyRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.bodies = append(u.bodies, string(b))
	u.mu.Unlock()
	_, _ = w.Write([]byte(`{}`))
}

// check fails t unless the upstream got exactly the bodies sent, in order.
func (u *bodyRecorder) check(t *testing.T, sent []string) {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.bodies) != len(sent) {
		t.Fatalf("upstream got %d requests, want %d", len(u.bodies), len(sent))
	}
	for i := range sent {
		if u.bodies[i] != sent[i] {
			t.Errorf("request %d: upstream body of %d bytes differs from the %d sent", i, len(u.bodies[i]), len(sent[i]))
		}
	}
}
