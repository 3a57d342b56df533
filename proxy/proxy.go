package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
	"k8s.io/utils/clock"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/pki"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/serving"
)

// AuthMode says how the proxy treats client credentials.
type AuthMode string

// Auth modes (the --auth-mode values).
const (
	// AuthFrontProxy authenticates clients and forwards their identity with
	// X-Remote-* headers over the front-proxy client certificate.
	AuthFrontProxy AuthMode = "front-proxy"
	// AuthPassthrough forwards credentials untouched.
	AuthPassthrough AuthMode = "passthrough"
)

// Config configures a Proxy. File paths are read by New (and the client CA
// and front-proxy pair again whenever they change on disk, while Run runs).
type Config struct {
	// Upstream is the API server, https://host:port; required.
	Upstream *url.URL
	// UpstreamCAFile verifies the upstream's serving certificate; empty uses
	// the system roots.
	UpstreamCAFile string
	// UpstreamServerName overrides the name checked in the upstream certificate.
	UpstreamServerName string

	// Serving is the serving pair, shared with every listener serving the
	// same files; its owner runs its reload loop. Required by ServerConfig
	// (Handler works without it).
	Serving *serving.CertKey

	// AuthMode is front-proxy (default) or passthrough.
	AuthMode AuthMode
	// ClientCAFile verifies client certificates (reloaded when it changes).
	// Required in front-proxy mode.
	ClientCAFile string
	// FrontProxyCertFile and FrontProxyKeyFile are the client pair the proxy
	// presents upstream when it forwards identity headers (CN must be one of
	// the API server's --requestheader-allowed-names). Required in
	// front-proxy mode; optional in passthrough (cert users need it).
	FrontProxyCertFile, FrontProxyKeyFile string
	// TokenReviewClient authenticates bearer tokens; nil ignores tokens.
	TokenReviewClient authenticationv1client.AuthenticationV1Interface
	// TokenCacheTTL is how long a TokenReview answer is reused; default 10s.
	TokenCacheTTL time.Duration

	// Engine judges rate limits, breakers and budgets; required.
	Engine *limiter.Engine
	// Policy is the policy the proxy starts with: its priority levels and
	// flow schemas; required. Later ones come through PreparePolicy, which
	// the caller subscribes to its policy watcher.
	Policy *policy.Compiled
	// BudgetsAtProxy charges budgets here (no webhook deployed); otherwise the
	// proxy only rejects requests whose budget key has an open breaker.
	BudgetsAtProxy bool

	// MaxQueueWait bounds a request's wait in a priority level queue; default 15s.
	MaxQueueWait time.Duration
	// ResponseHeaderTimeout bounds the wait for the upstream's response
	// headers (long-running requests get theirs at once); default 75s.
	ResponseHeaderTimeout time.Duration
	// BodyReadTimeout bounds the wait for the options body of a DELETE or
	// an eviction, which the proxy reads before its limits; past it the
	// proxy answers 408. Default DefaultBodyReadTimeout.
	BodyReadTimeout time.Duration
	// DialTimeout bounds connecting to the upstream; default 5s.
	DialTimeout time.Duration
	// ShutdownTimeout is how long the proxy's listener lets in-flight
	// requests finish; zero means serving.DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// UpstreamHealthInterval is how long an answer of the upstream's /readyz
	// is reused by Readyz; default 5s.
	UpstreamHealthInterval time.Duration

	// Logger receives the proxy's logs; nil discards. Bearer tokens never
	// reach it.
	Logger *slog.Logger
	// Registerer takes the proxy metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Clock is the proxy's one clock: queue waits and their bound,
	// fair-queuing virtual time, latencies, the client certificate cache and
	// the upstream health cache; nil is real time.
	Clock clock.WithDelayedExecution
}

// Proxy is the reverse proxy. Build it with New; serve it with a
// serving.Server built from ServerConfig (or mount Handler in a server of
// your own), and run Run beside it for the certificates it reloads.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	clock     clock.WithDelayedExecution
	metrics   *metrics
	auth      authenticator.Request
	clientCA  *dynamiccertificates.DynamicFileCAContent
	frontCert *serving.CertKey
	levels    *priorityLevels
	forward   http.Handler
	// upstreamTransport is the plain one; frontTransport presents the
	// front-proxy certificate.
	upstreamTransport, frontTransport *http.Transport
	// upstreamUpgrade and frontUpgrade are their HTTP/1.1-only twins for
	// upgrade requests.
	upstreamUpgrade, frontUpgrade *http.Transport
	handler                       http.Handler
	health                        *upstreamHealth
}

// New builds a Proxy from cfg. It runs cfg.Policy until the caller commits
// another through PreparePolicy.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	p := &Proxy{cfg: cfg, log: cfg.Logger, clock: cfg.Clock, metrics: newMetrics()}
	if cfg.Registerer != nil {
		if err := p.metrics.register(cfg.Registerer); err != nil {
			return nil, err
		}
	}
	if cfg.Serving != nil && cfg.Registerer != nil {
		if err := cfg.Registerer.Register(pki.ExpiryGauge("proxy", cfg.Serving.Leaf)); err != nil {
			return nil, fmt.Errorf("failed to register the proxy's certificate expiry metric: %w", err)
		}
	}
	if cfg.FrontProxyCertFile != "" {
		kp, err := serving.NewCertKey(serving.CertKeyConfig{Purpose: "front-proxy", CertFile: cfg.FrontProxyCertFile, KeyFile: cfg.FrontProxyKeyFile,
			Logger: p.log})
		if err != nil {
			return nil, err
		}
		p.frontCert = kp
	}
	if err := p.buildAuthenticator(); err != nil {
		return nil, err
	}
	if err := p.buildTransports(); err != nil {
		return nil, err
	}
	p.health = &upstreamHealth{probe: p.checkUpstream, clock: p.clock, interval: cfg.UpstreamHealthInterval, log: p.log}
	levels, err := newPriorityLevels(p.clock, cfg.MaxQueueWait, p.metrics)
	if err != nil {
		return nil, err
	}
	p.levels = levels
	commit, err := p.levels.prepare(cfg.Policy)
	if err != nil {
		return nil, err
	}
	commit()
	// The proxy keeps no copy of its own: the levels hold the policy they
	// run (from a commit on), the engine the one it judges by.
	p.cfg.Policy = nil
	p.forward = p.newForwarder()
	p.handler = p.buildChain()
	return p, nil
}

func (c *Config) validate() error {
	var errs []error
	if c.Upstream == nil || c.Upstream.Scheme != "https" || c.Upstream.Host == "" {
		errs = append(errs, errors.New("upstream: want an https://host:port URL"))
	}
	if c.Engine == nil {
		errs = append(errs, errors.New("engine is required"))
	}
	if c.Policy == nil {
		errs = append(errs, errors.New("policy is required"))
	}
	switch c.AuthMode {
	case "", AuthFrontProxy:
		if c.ClientCAFile == "" && c.TokenReviewClient == nil {
			errs = append(errs, errors.New("front-proxy mode needs a client CA file or a TokenReview client to authenticate anyone"))
		}
		if c.FrontProxyCertFile == "" || c.FrontProxyKeyFile == "" {
			errs = append(errs, errors.New("front-proxy mode needs the front-proxy client certificate and key"))
		}
	case AuthPassthrough:
	default:
		errs = append(errs, fmt.Errorf("auth mode %q: want %s or %s", c.AuthMode, AuthFrontProxy, AuthPassthrough))
	}
	if (c.FrontProxyCertFile == "") != (c.FrontProxyKeyFile == "") {
		errs = append(errs, errors.New("the front-proxy certificate and key go together"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("failed to configure the proxy: %w", errors.Join(errs...))
	}
	return nil
}

func (c *Config) defaults() {
	if c.AuthMode == "" {
		c.AuthMode = AuthFrontProxy
	}
	if c.TokenCacheTTL <= 0 {
		c.TokenCacheTTL = 10 * time.Second
	}
	if c.MaxQueueWait <= 0 {
		c.MaxQueueWait = 15 * time.Second
	}
	if c.ResponseHeaderTimeout <= 0 {
		c.ResponseHeaderTimeout = 75 * time.Second
	}
	if c.BodyReadTimeout <= 0 {
		c.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.UpstreamHealthInterval <= 0 {
		c.UpstreamHealthInterval = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
}

// PreparePolicy builds the priority levels of a new policy to the side and
// returns the commit that swaps them in (policy.Subscriber); queued requests
// stay queued. A level whose queue set does not configure refuses the
// policy. The engine is reloaded by its own subscription.
func (p *Proxy) PreparePolicy(c *policy.Compiled) (commit func(), err error) {
	return p.levels.prepare(c)
}

var _ policy.Subscriber = (*Proxy)(nil)

// Handler returns the whole chain: what the listener of ServerConfig serves
// (the serving.Server built from it; Run serves nothing).
func (p *Proxy) Handler() http.Handler { return p.handler }

// buildChain writes the order of the filters once. Outermost first: the
// health endpoints need no state; the request state, which every filter
// after it shares; instrumentation sees every answer, including the proxy's
// own rejections;
// header hygiene runs before anything reads identity; authentication before
// anything keyed on the user; attributes before the limits that match on
// them; cheap limit rejections before queuing, so a rejected request never
// holds a queue slot; the priority levels last, right before forwarding, so
// a seat is held only while the upstream works.
func (p *Proxy) buildChain() http.Handler {
	h := WithPriorityLevels(p.levels, p.forward)
	h = WithLimits(LimitsConfig{Engine: p.cfg.Engine, BudgetsAtProxy: p.cfg.BudgetsAtProxy, Metrics: p.metrics}, h)
	h = WithRequestAttributes(p.cfg.BodyReadTimeout, h)
	h = WithAuthentication(AuthConfig{Mode: p.cfg.AuthMode, Authenticator: p.auth, CanForwardIdentity: p.frontCert != nil, Logger: p.log}, h)
	h = WithHeaderHygiene(h)
	h = WithInstrumentation(p.metrics, h)
	h = WithRequestState(p.clock, h)
	return p.withHealth(h)
}

// withHealth answers /kubedefender/healthz and /kubedefender/readyz on the
// proxy listener itself (no authentication); everything else goes on.
func (p *Proxy) withHealth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/kubedefender/healthz":
			_, _ = w.Write([]byte("ok"))
		case "/kubedefender/readyz":
			p.Readyz().ServeHTTP(w, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func (p *Proxy) upstreamTLS() (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: p.cfg.UpstreamServerName}
	if p.cfg.UpstreamCAFile != "" {
		pem, err := os.ReadFile(p.cfg.UpstreamCAFile)
		if err != nil {
			return nil, fmt.Errorf("failed to read the upstream CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("failed to parse the upstream CA %s: no PEM certificate", p.cfg.UpstreamCAFile)
		}
		c.RootCAs = pool
	}
	return c, nil
}

// Levels reports the load of each priority level (nil without priority levels).
func (p *Proxy) Levels() []LevelStatus { return p.levels.status() }
