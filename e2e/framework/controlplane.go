package framework

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Users that every control plane knows by static token (see
// ControlPlane.Tokens). Admin is in system:masters; Alice and Bob have no
// groups beyond system:authenticated, so RBAC denies them everything until a
// test grants it.
const (
	UserAdmin = "admin"
	UserAlice = "alice"
	UserBob   = "bob"
)

// DefaultControllers are the kube-controller-manager controllers started when
// Options.Controllers is empty: the garbage collector and the namespace
// controller (cascading deletes), the service account controller (pods need a
// "default" service account), the root CA publisher, and the Deployment and
// ReplicaSet controllers (so owner chains exist to cascade through).
var DefaultControllers = []string{
	"garbage-collector-controller",
	"namespace-controller",
	"serviceaccount-controller",
	"root-ca-certificate-publisher-controller",
	"deployment-controller",
	"replicaset-controller",
}

// User is an extra static-token user for Options.Users.
type User struct {
	Name   string
	Groups []string
}

// Options configure Start. The zero value starts etcd and kube-apiserver only.
type Options struct {
	// ControllerManager also starts kube-controller-manager, authenticated as
	// system:kube-controller-manager with --use-service-account-credentials, so
	// that the garbage collector acts as
	// system:serviceaccount:kube-system:generic-garbage-collector.
	ControllerManager bool
	// Controllers overrides DefaultControllers (kube-controller-manager
	// --controllers values).
	Controllers []string
	// Users are static-token users in addition to admin, alice and bob.
	Users []User
	// APIServerFlags are appended to kube-apiserver's command line (a later
	// flag wins), e.g. "--admission-control-config-file=...".
	APIServerFlags []string
	// ControllerManagerFlags are appended to kube-controller-manager's.
	ControllerManagerFlags []string
	// WebhookClientAuth makes the API server authenticate to admission
	// webhooks with a client certificate, the upstream "authenticate
	// apiservers" mechanism: --admission-control-config-file names an
	// AdmissionConfiguration whose ValidatingAdmissionWebhook plugin reads
	// a kubeconfig (WebhookClientKubeconfig) that gives every webhook host
	// ("*") the pair WebhookClientCertFile/KeyFile, CN=WebhookClientName,
	// signed by its own CA, WebhookClientCACertFile (what a webhook passes
	// to --webhook-client-ca-file).
	WebhookClientAuth bool
	// AuditLog makes the API server write an audit log (JSON lines, level
	// Metadata, every verb except get, list and watch) to
	// ControlPlane.AuditLogFile, e.g. to see who deleted what.
	AuditLog bool
	// StartTimeout bounds the wait for each component to become healthy.
	// Zero means 60s.
	StartTimeout time.Duration
}

// ControlPlane is a running etcd + kube-apiserver (+ kube-controller-manager).
// All paths are absolute and live under Dir, which is removed when the test
// ends (unless KUBEDEFENDER_E2E_KEEP=1).
type ControlPlane struct {
	Dir      string
	Binaries Binaries

	// URL is the API server's base URL, https://127.0.0.1:<port>.
	URL string
	// EtcdURL is etcd's client URL, http://127.0.0.1:<port>.
	EtcdURL string

	// Cluster CA: signs the API server's serving certificate and the client
	// certificates it accepts (--client-ca-file).
	CACertFile string
	CAKeyFile  string
	// The API server's serving pair, for 127.0.0.1 and localhost.
	ServingCertFile string
	ServingKeyFile  string
	// Admin client certificate: CN=kubedefender-admin, O=system:masters.
	AdminCertFile string
	AdminKeyFile  string

	// Front-proxy CA (--requestheader-client-ca-file) and the client pair it
	// signed with CN=front-proxy-client, the only name the API server accepts
	// X-Remote-User / X-Remote-Group / X-Remote-Extra-* headers from.
	FrontProxyCACertFile     string
	FrontProxyCAKeyFile      string
	FrontProxyClientCertFile string
	FrontProxyClientKeyFile  string

	// With Options.WebhookClientAuth: the CA that signs the client
	// certificate the API server presents to admission webhooks, that pair,
	// the kubeconfig naming it for every webhook host, and the
	// AdmissionConfiguration file that points the API server at it. Empty
	// otherwise.
	WebhookClientCACertFile string
	WebhookClientCAKeyFile  string
	WebhookClientCertFile   string
	WebhookClientKeyFile    string
	WebhookClientKubeconfig string
	AdmissionConfigFile     string

	// Service-account token signing pair.
	ServiceAccountKeyFile       string // private, RSA PKCS#1
	ServiceAccountPublicKeyFile string // public, PKIX
	ServiceAccountIssuer        string

	// TokenAuthFile is the --token-auth-file; Tokens maps user name to token.
	TokenAuthFile string
	Tokens        map[string]string

	// AdminKubeconfig authenticates with the admin client certificate.
	AdminKubeconfig string
	// Config is the admin rest.Config and Client a clientset built from it.
	Config *rest.Config
	Client kubernetes.Interface

	// AuditLogFile is the API server's audit log (Options.AuditLog); empty
	// without one. ReadAuditEvents parses it.
	AuditLogFile string

	// Log files of each component (stdout and stderr together).
	EtcdLog              string
	APIServerLog         string
	ControllerManagerLog string // empty without a controller manager
	// ControllerManagerURL is kube-controller-manager's secure serving URL.
	ControllerManagerURL string

	opts      Options
	ca        *authority
	frontCA   *authority
	webhookCA *authority

	mu    sync.Mutex
	procs []*process
}

const (
	logTailLines   = 60 // per component, printed when a test fails
	errorTailLines = 20 // in a start failure's message
)

// Start starts a control plane for t and stops it when t ends. Any failure to
// start is fatal to t and says why (with the tail of the failing component's
// log); a missing binary says how to build it.
func Start(t testing.TB, opts Options) *ControlPlane {
	t.Helper()
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	if len(opts.Controllers) == 0 {
		opts.Controllers = DefaultControllers
	}
	bins, err := FindBinaries()
	if err != nil {
		t.Fatalf("failed to find the control plane binaries: %v", err)
	}
	cp := &ControlPlane{Dir: controlPlaneDir(t), Binaries: bins, opts: opts}
	t.Cleanup(func() { cp.stop(t) })

	began := time.Now()
	steps := []struct {
		name string
		fn   func() error
	}{
		{"write PKI", cp.writePKI},
		{"start etcd", cp.startEtcd},
		{"start kube-apiserver", cp.startAPIServer},
		{"start kube-controller-manager", cp.startControllerManager},
	}
	var took []string
	for _, s := range steps {
		stepBegan := time.Now()
		if err := s.fn(); err != nil {
			t.Fatalf("failed to %s: %v", s.name, err)
		}
		took = append(took, fmt.Sprintf("%s %s", s.name, time.Since(stepBegan).Round(10*time.Millisecond)))
	}
	t.Logf("control plane up in %s (%s): %s, dir %s", time.Since(began).Round(10*time.Millisecond), strings.Join(took, ", "), cp.URL, cp.Dir)
	return cp
}

func controlPlaneDir(t testing.TB) string {
	if os.Getenv(EnvKeep) != "1" {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("", "kubedefender-e2e-")
	if err != nil {
		t.Fatalf("failed to create the control plane dir: %v", err)
	}
	t.Logf("%s=1: keeping %s", EnvKeep, dir)
	return dir
}

// stop kills every started process, newest first, and on failure prints the
// tail of each log. It runs before the directory is removed because t.Cleanup
// functions run last-registered first and TempDir was registered earlier.
func (cp *ControlPlane) stop(t testing.TB) {
	cp.mu.Lock()
	procs := cp.procs
	cp.procs = nil
	cp.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].stop(); err != nil {
			t.Errorf("failed to stop %s: %v", procs[i].Name, err)
		}
	}
	if t.Failed() {
		for _, p := range procs {
			t.Logf("---- last %d lines of %s (%s) ----\n%s", logTailLines, p.Name, p.LogFile, p.tail(logTailLines))
		}
	}
}

func (cp *ControlPlane) track(p *process) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.procs = append(cp.procs, p)
}

func (cp *ControlPlane) path(elem ...string) string {
	return filepath.Join(append([]string{cp.Dir}, elem...)...)
}

func (cp *ControlPlane) writePKI() error {
	pki := cp.path("pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return fmt.Errorf("failed to create %s: %w", pki, err)
	}
	p := func(name string) string { return filepath.Join(pki, name) }

	var err error
	if cp.ca, err = newAuthority("kubedefender-e2e-ca", p("ca.crt"), p("ca.key")); err != nil {
		return err
	}
	cp.CACertFile, cp.CAKeyFile = cp.ca.CertFile, cp.ca.KeyFile
	cp.ServingCertFile, cp.ServingKeyFile = p("apiserver.crt"), p("apiserver.key")
	if err := cp.ca.issueServing("kube-apiserver",
		[]string{"127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.96.0.1"},
		cp.ServingCertFile, cp.ServingKeyFile); err != nil {
		return err
	}
	cp.AdminCertFile, cp.AdminKeyFile = p("admin.crt"), p("admin.key")
	if err := cp.ca.issueClient("kubedefender-admin", []string{"system:masters"},
		cp.AdminCertFile, cp.AdminKeyFile); err != nil {
		return err
	}

	if cp.frontCA, err = newAuthority("kubedefender-e2e-front-proxy-ca", p("front-proxy-ca.crt"), p("front-proxy-ca.key")); err != nil {
		return err
	}
	cp.FrontProxyCACertFile, cp.FrontProxyCAKeyFile = cp.frontCA.CertFile, cp.frontCA.KeyFile
	cp.FrontProxyClientCertFile, cp.FrontProxyClientKeyFile = p("front-proxy-client.crt"), p("front-proxy-client.key")
	if err := cp.frontCA.issueClient("front-proxy-client", nil,
		cp.FrontProxyClientCertFile, cp.FrontProxyClientKeyFile); err != nil {
		return err
	}

	if cp.opts.WebhookClientAuth {
		if err := cp.writeWebhookClientAuth(); err != nil {
			return err
		}
	}

	cp.ServiceAccountKeyFile, cp.ServiceAccountPublicKeyFile = p("sa.key"), p("sa.pub")
	cp.ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
	if err := writeServiceAccountKeys(cp.ServiceAccountKeyFile, cp.ServiceAccountPublicKeyFile); err != nil {
		return err
	}
	return cp.writeTokenFile()
}

// writeTokenFile writes the static token file: token,user,uid,"group,...".
func (cp *ControlPlane) writeTokenFile() error {
	users := []User{
		{Name: UserAdmin, Groups: []string{"system:masters"}},
		{Name: UserAlice},
		{Name: UserBob},
	}
	users = append(users, cp.opts.Users...)
	cp.Tokens = make(map[string]string, len(users))
	var b strings.Builder
	for _, u := range users {
		if _, dup := cp.Tokens[u.Name]; dup {
			return fmt.Errorf("failed to write the token file: user %q is listed twice", u.Name)
		}
		tok, err := randomToken()
		if err != nil {
			return err
		}
		cp.Tokens[u.Name] = tok
		fmt.Fprintf(&b, "%s,%s,uid-%s", tok, u.Name, u.Name)
		if len(u.Groups) > 0 {
			fmt.Fprintf(&b, ",%q", strings.Join(u.Groups, ","))
		}
		b.WriteString("\n")
	}
	cp.TokenAuthFile = cp.path("pki", "tokens.csv")
	if err := os.WriteFile(cp.TokenAuthFile, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("failed to write the token file: %w", err)
	}
	return nil
}

// startWithRetry starts a component on fresh ports until it becomes healthy,
// retrying when it exits early (most likely a port lost to a race).
func (cp *ControlPlane) startWithRetry(name string, nPorts int, start func(ports []int) (*process, error), ready func(ctx context.Context, ports []int) error) error {
	const attempts = 3
	var last error
	for range attempts {
		ports, err := freePorts(nPorts)
		if err != nil {
			return err
		}
		p, err := start(ports)
		if err != nil {
			return err
		}
		cp.track(p)
		err = cp.waitReady(p, func(ctx context.Context) error { return ready(ctx, ports) })
		if err == nil {
			return nil
		}
		if exited, _ := p.exited(); !exited || !strings.Contains(tailFile(p.LogFile, 200), "address already in use") {
			return err
		}
		last = err
	}
	return fmt.Errorf("failed to start %s after %d attempts: %w", name, attempts, last)
}

// waitReady polls ready until it succeeds, the process exits, or
// Options.StartTimeout passes. The error carries the log tail.
func (cp *ControlPlane) waitReady(p *process, ready func(ctx context.Context) error) error {
	deadline := time.Now().Add(cp.opts.StartTimeout)
	var lastErr error
	for {
		if exited, how := p.exited(); exited {
			return fmt.Errorf("%s exited before becoming ready (%w); last lines of %s:\n%s", p.Name, how, p.LogFile, p.tail(errorTailLines))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		lastErr = ready(ctx)
		cancel()
		if lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %s (last check: %w); last lines of %s:\n%s", p.Name, cp.opts.StartTimeout, lastErr, p.LogFile, p.tail(errorTailLines))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (cp *ControlPlane) startEtcd() error {
	cp.EtcdLog = cp.path("logs", "etcd.log")
	if err := os.MkdirAll(cp.path("logs"), 0o755); err != nil {
		return fmt.Errorf("failed to create the log dir: %w", err)
	}
	client := &http.Client{Timeout: 2 * time.Second}
	return cp.startWithRetry("etcd", 2,
		func(ports []int) (*process, error) {
			cp.EtcdURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
			data := cp.path("etcd-data")
			_ = os.RemoveAll(data)
			return startProcess("etcd", cp.Binaries.Etcd, cp.EtcdLog, []string{
				"--data-dir=" + data,
				"--listen-client-urls=" + cp.EtcdURL,
				fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", ports[1]),
			})
		},
		func(ctx context.Context, _ []int) error {
			return httpOK(ctx, client, cp.EtcdURL+"/health")
		})
}

func (cp *ControlPlane) startAPIServer() error {
	cp.APIServerLog = cp.path("logs", "kube-apiserver.log")
	if cp.opts.AuditLog {
		cp.AuditLogFile = cp.path("logs", "audit.log")
		if err := os.WriteFile(cp.path("audit-policy.yaml"), []byte(auditPolicy), 0o644); err != nil {
			return fmt.Errorf("failed to write the audit policy: %w", err)
		}
	}
	return cp.startWithRetry("kube-apiserver", 1,
		func(ports []int) (*process, error) {
			cp.URL = fmt.Sprintf("https://127.0.0.1:%d", ports[0])
			if err := cp.buildAdminClient(); err != nil {
				return nil, err
			}
			args := []string{
				"--etcd-servers=" + cp.EtcdURL,
				"--bind-address=127.0.0.1",
				"--advertise-address=127.0.0.1",
				// The endpoint reconciler refuses a loopback advertise address,
				// and nothing here reaches the API server through its Service.
				"--endpoint-reconciler-type=none",
				"--secure-port=" + strconv.Itoa(ports[0]),
				"--cert-dir=" + cp.path("apiserver"),
				"--tls-cert-file=" + cp.ServingCertFile,
				"--tls-private-key-file=" + cp.ServingKeyFile,
				"--client-ca-file=" + cp.CACertFile,
				"--token-auth-file=" + cp.TokenAuthFile,
				"--authorization-mode=Node,RBAC",
				"--service-account-issuer=" + cp.ServiceAccountIssuer,
				"--service-account-key-file=" + cp.ServiceAccountPublicKeyFile,
				"--service-account-signing-key-file=" + cp.ServiceAccountKeyFile,
				"--service-cluster-ip-range=10.96.0.0/16",
				"--requestheader-client-ca-file=" + cp.FrontProxyCACertFile,
				"--requestheader-allowed-names=front-proxy-client",
				"--requestheader-username-headers=X-Remote-User",
				"--requestheader-group-headers=X-Remote-Group",
				"--requestheader-extra-headers-prefix=X-Remote-Extra-",
				"--proxy-client-cert-file=" + cp.FrontProxyClientCertFile,
				"--proxy-client-key-file=" + cp.FrontProxyClientKeyFile,
				"--allow-privileged=true",
				"--profiling=false",
				"--enable-logs-handler=false",
			}
			if cp.AdmissionConfigFile != "" {
				args = append(args, "--admission-control-config-file="+cp.AdmissionConfigFile)
			}
			if cp.opts.AuditLog {
				args = append(args,
					"--audit-policy-file="+cp.path("audit-policy.yaml"),
					"--audit-log-path="+cp.AuditLogFile,
					"--audit-log-format=json",
					"--audit-log-mode=blocking",
				)
			}
			args = append(args, cp.opts.APIServerFlags...)
			return startProcess("kube-apiserver", cp.Binaries.KubeAPIServer, cp.APIServerLog, args)
		},
		func(ctx context.Context, _ []int) error {
			_, err := cp.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
			return err
		})
}

func (cp *ControlPlane) buildAdminClient() error {
	cp.Config = &rest.Config{
		Host: cp.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   cp.CACertFile,
			CertFile: cp.AdminCertFile,
			KeyFile:  cp.AdminKeyFile,
		},
		QPS:       100,
		Burst:     200,
		UserAgent: "kubedefender-e2e",
	}
	c, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		return fmt.Errorf("failed to build the admin client: %w", err)
	}
	cp.Client = c
	cp.AdminKubeconfig = cp.path("admin.kubeconfig")
	return writeKubeconfig(cp.AdminKubeconfig, cp.URL, cp.CACertFile, "admin", authInfo{certFile: cp.AdminCertFile, keyFile: cp.AdminKeyFile})
}

func (cp *ControlPlane) startControllerManager() error {
	if !cp.opts.ControllerManager {
		return nil
	}
	cp.ControllerManagerLog = cp.path("logs", "kube-controller-manager.log")
	dir := cp.path("kube-controller-manager")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("failed to create %s: %w", dir, err)
	}
	certFile, keyFile := filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	if err := cp.ca.issueClient("system:kube-controller-manager", nil, certFile, keyFile); err != nil {
		return err
	}
	servingCert, servingKey := filepath.Join(dir, "serving.crt"), filepath.Join(dir, "serving.key")
	if err := cp.ca.issueServing("kube-controller-manager", []string{"127.0.0.1", "localhost"}, servingCert, servingKey); err != nil {
		return err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, cp.URL, cp.CACertFile, "system:kube-controller-manager", authInfo{certFile: certFile, keyFile: keyFile}); err != nil {
		return err
	}
	client, err := cp.httpClientTrustingCA()
	if err != nil {
		return err
	}
	return cp.startWithRetry("kube-controller-manager", 1,
		func(ports []int) (*process, error) {
			cp.ControllerManagerURL = fmt.Sprintf("https://127.0.0.1:%d", ports[0])
			args := []string{
				"--kubeconfig=" + kubeconfig,
				"--authentication-kubeconfig=" + kubeconfig,
				"--authorization-kubeconfig=" + kubeconfig,
				"--bind-address=127.0.0.1",
				"--secure-port=" + strconv.Itoa(ports[0]),
				"--tls-cert-file=" + servingCert,
				"--tls-private-key-file=" + servingKey,
				"--leader-elect=false",
				"--use-service-account-credentials=true",
				"--service-account-private-key-file=" + cp.ServiceAccountKeyFile,
				"--root-ca-file=" + cp.CACertFile,
				"--controllers=" + strings.Join(cp.opts.Controllers, ","),
				"--profiling=false",
			}
			args = append(args, cp.opts.ControllerManagerFlags...)
			return startProcess("kube-controller-manager", cp.Binaries.KubeControllerManager, cp.ControllerManagerLog, args)
		},
		func(ctx context.Context, _ []int) error {
			return httpOK(ctx, client, cp.ControllerManagerURL+"/healthz")
		})
}

func (cp *ControlPlane) httpClientTrustingCA() (*http.Client, error) {
	pem, err := os.ReadFile(cp.CACertFile)
	if err != nil {
		return nil, fmt.Errorf("failed to read the CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("failed to parse the CA certificate")
	}
	return &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}, nil
}

func httpOK(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("failed to build request: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("failed to GET %s: %w", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("failed to GET %s: status %s", url, resp.Status)
	}
	return nil
}
