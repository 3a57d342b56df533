package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubedefender/kubedefender/limiter/redisstore"
	"github.com/kubedefender/kubedefender/serving"
)

// Auth modes of the proxy.
const (
	AuthFrontProxy  = "front-proxy"
	AuthPassthrough = "passthrough"
)

// Where budgets are charged.
const (
	BudgetsAtWebhook = "webhook"
	BudgetsAtProxy   = "proxy"
)

// ServeOptions are the flags of `kubedefender serve`.
type ServeOptions struct {
	PolicyFile string
	Kubeconfig string

	WebhookListen string
	// WebhookClientCAFile verifies the client certificates of the webhook's
	// callers (the API server); empty accepts any caller.
	WebhookClientCAFile string
	// WebhookClientAllowedNames, when set, are the only common names the
	// webhook accepts in a client certificate.
	WebhookClientAllowedNames []string

	ProxyListen        string
	Upstream           string
	UpstreamCAFile     string
	AuthMode           string
	ClientCAFile       string
	FrontProxyCertFile string
	FrontProxyKeyFile  string
	BudgetsAt          string

	TLSCertFile       string
	TLSPrivateKeyFile string

	RedisURL                string
	RedisPasswordFile       string
	RedisCAFile             string
	RedisCertFile           string
	RedisKeyFile            string
	RedisInsecureSkipVerify bool
	RedisKeyPrefix          string
	RedisReplicas           int
	RedisTimeout            time.Duration
	RedisAutoPipeline       bool

	MetricsListen string

	LogLevel        string
	LogFormat       string
	ShutdownTimeout time.Duration
}

// NewServeOptions returns the defaults.
func NewServeOptions() *ServeOptions {
	return &ServeOptions{
		AuthMode:        AuthFrontProxy,
		BudgetsAt:       BudgetsAtWebhook,
		RedisTimeout:    100 * time.Millisecond,
		MetricsListen:   ":9090",
		LogLevel:        "info",
		LogFormat:       "json",
		ShutdownTimeout: 15 * time.Second,
	}
}

// AddFlags binds the options to fs.
func (o *ServeOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.PolicyFile, "policy", o.PolicyFile, "DefenderPolicy file, watched and reloaded on change (required)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "kubeconfig for TokenReview, Overrides and Events (empty: in-cluster config when running in a pod)")
	fs.StringVar(&o.WebhookListen, "webhook-listen", o.WebhookListen, "address of the admission webhook (POST /validate), e.g. :8443; empty disables it")
	fs.StringVar(&o.WebhookClientCAFile, "webhook-client-ca-file", o.WebhookClientCAFile, "CA bundle that verifies the client certificate the API server presents to the webhook (reloaded when it changes); a caller without one fails the TLS handshake. Empty: anyone who can reach --webhook-listen may post reviews")
	fs.StringSliceVar(&o.WebhookClientAllowedNames, "webhook-client-allowed-names", o.WebhookClientAllowedNames, "common names accepted in the webhook's client certificates, comma-separated (empty: any name signed by --webhook-client-ca-file)")
	fs.StringVar(&o.ProxyListen, "proxy-listen", o.ProxyListen, "address of the API proxy, e.g. :6443; empty disables it")
	fs.StringVar(&o.Upstream, "upstream", o.Upstream, "URL of the kube-apiserver the proxy forwards to, e.g. https://10.0.0.1:6443")
	fs.StringVar(&o.UpstreamCAFile, "upstream-ca-file", o.UpstreamCAFile, "CA bundle that verifies the upstream API server")
	fs.StringVar(&o.AuthMode, "auth-mode", o.AuthMode, "proxy authentication: front-proxy (authenticate clients, forward identity with X-Remote-* headers) or passthrough (forward credentials)")
	fs.StringVar(&o.ClientCAFile, "client-ca-file", o.ClientCAFile, "front-proxy: CA that verifies client certificates")
	fs.StringVar(&o.FrontProxyCertFile, "front-proxy-cert-file", o.FrontProxyCertFile, "front-proxy: client certificate the proxy presents to the API server")
	fs.StringVar(&o.FrontProxyKeyFile, "front-proxy-key-file", o.FrontProxyKeyFile, "front-proxy: key of --front-proxy-cert-file")
	fs.StringVar(&o.BudgetsAt, "budgets-at", o.BudgetsAt, "where budgets are charged: webhook (the proxy only rejects early on open breakers) or proxy (no webhook deployed)")
	fs.StringVar(&o.TLSCertFile, "tls-cert-file", o.TLSCertFile, "serving certificate of the webhook and proxy (reloaded when it changes)")
	fs.StringVar(&o.TLSPrivateKeyFile, "tls-private-key-file", o.TLSPrivateKeyFile, "key of --tls-cert-file")
	fs.StringVar(&o.RedisURL, "redis-url", o.RedisURL, "shared store: redis://[user:pass@]host:port/db, rediss://..., redis+sentinel://..., redis+cluster://... (empty: in-memory, one replica)")
	fs.StringVar(&o.RedisPasswordFile, "redis-password-file", o.RedisPasswordFile, "file holding the Redis password (replaces one in --redis-url; keeps it out of flags and process lists)")
	fs.StringVar(&o.RedisCAFile, "redis-ca-file", o.RedisCAFile, "CA bundle that verifies Redis (turns TLS on)")
	fs.StringVar(&o.RedisCertFile, "redis-cert-file", o.RedisCertFile, "client certificate for Redis (mutual TLS)")
	fs.StringVar(&o.RedisKeyFile, "redis-key-file", o.RedisKeyFile, "key of --redis-cert-file")
	fs.BoolVar(&o.RedisInsecureSkipVerify, "redis-insecure-skip-verify", o.RedisInsecureSkipVerify, "do not verify Redis's certificate (testing only)")
	fs.StringVar(&o.RedisKeyPrefix, "redis-key-prefix", o.RedisKeyPrefix, `prefix of every Redis key (default "kd:v1:"); give each KubeDefender deployment sharing a Redis its own`)
	fs.BoolVar(&o.RedisAutoPipeline, "redis-autopipeline", o.RedisAutoPipeline, "pipeline concurrent rate-limit decisions on shared connections (faster under load, slower for a lone caller; budget decisions are coalesced by the store either way)")
	fs.IntVar(&o.RedisReplicas, "redis-replicas", o.RedisReplicas, "replicas sharing the store, for onStoreFailure: Local shares (0: discovered through Redis heartbeats)")
	fs.DurationVar(&o.RedisTimeout, "redis-timeout", o.RedisTimeout, "timeout of one Redis call; a decision never waits longer")
	fs.StringVar(&o.MetricsListen, "metrics-listen", o.MetricsListen, "address of /metrics, /healthz, /readyz and /status; empty disables it")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error")
	fs.StringVar(&o.LogFormat, "log-format", o.LogFormat, "json or text")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", o.ShutdownTimeout, "how long in-flight requests may take to finish on SIGTERM")
}

// Validate reports every problem with the options at once. It touches nothing.
func (o *ServeOptions) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.PolicyFile == "" {
		add("--policy is required")
	}
	if o.WebhookListen == "" && o.ProxyListen == "" {
		add("nothing to serve: set --webhook-listen, --proxy-listen or both")
	}
	for flag, addr := range map[string]string{"--webhook-listen": o.WebhookListen, "--proxy-listen": o.ProxyListen, "--metrics-listen": o.MetricsListen} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			add("%s %q: want host:port or :port", flag, addr)
		}
	}
	if (o.WebhookListen != "" || o.ProxyListen != "") && (o.TLSCertFile == "" || o.TLSPrivateKeyFile == "") {
		add("--tls-cert-file and --tls-private-key-file are required to serve the webhook or the proxy (kubedefender certs generate makes a pair)")
	}
	if o.WebhookClientCAFile != "" && o.WebhookListen == "" {
		add("--webhook-client-ca-file needs --webhook-listen")
	}
	if len(o.WebhookClientAllowedNames) > 0 && o.WebhookClientCAFile == "" {
		add("--webhook-client-allowed-names needs --webhook-client-ca-file (names are read from verified client certificates)")
	}
	for _, n := range o.WebhookClientAllowedNames {
		switch {
		case n == "":
			add("--webhook-client-allowed-names: an empty name matches no certificate")
		case strings.TrimSpace(n) != n:
			add("--webhook-client-allowed-names: %q has leading or trailing spaces (write a,b, not a, b)", n)
		}
	}
	if o.WebhookClientCAFile != "" {
		if data, err := os.ReadFile(o.WebhookClientCAFile); err == nil {
			if _, err := serving.ParseCABundle(data); err != nil {
				add("--webhook-client-ca-file %s: %v", o.WebhookClientCAFile, err)
			}
		}
	}
	if o.ProxyListen != "" {
		if o.Upstream == "" {
			add("--upstream is required with --proxy-listen")
		} else if u, err := url.Parse(o.Upstream); err != nil || u.Scheme != "https" || u.Host == "" {
			add("--upstream %q: want https://host:port", o.Upstream)
		}
		switch o.AuthMode {
		case AuthFrontProxy:
			if o.ClientCAFile == "" {
				add("--client-ca-file is required with --auth-mode=front-proxy")
			}
			if o.FrontProxyCertFile == "" || o.FrontProxyKeyFile == "" {
				add("--front-proxy-cert-file and --front-proxy-key-file are required with --auth-mode=front-proxy")
			}
		case AuthPassthrough:
		default:
			add("--auth-mode %q: want front-proxy or passthrough", o.AuthMode)
		}
	}
	if o.BudgetsAt != BudgetsAtWebhook && o.BudgetsAt != BudgetsAtProxy {
		add("--budgets-at %q: want webhook or proxy", o.BudgetsAt)
	}
	if o.BudgetsAt == BudgetsAtProxy && o.WebhookListen != "" {
		add("--budgets-at=proxy charges budgets in the proxy; with --webhook-listen every delete would be charged twice (use --budgets-at=webhook when the webhook is deployed)")
	}
	if o.BudgetsAt == BudgetsAtProxy && o.ProxyListen == "" {
		add("--budgets-at=proxy needs --proxy-listen")
	}
	if o.RedisURL != "" {
		// The store's own parser: its errors never show the password.
		if _, err := redisstore.ParseRedisURL(o.RedisURL); err != nil {
			add("--redis-url: %v", err)
		}
	}
	if (o.RedisCertFile == "") != (o.RedisKeyFile == "") {
		add("--redis-cert-file and --redis-key-file go together")
	}
	if o.RedisURL == "" && (o.RedisPasswordFile != "" || o.RedisCAFile != "" || o.RedisCertFile != "" || o.RedisKeyPrefix != "" || o.RedisReplicas != 0) {
		add("--redis-* options need --redis-url")
	}
	if o.RedisReplicas < 0 {
		add("--redis-replicas must not be negative")
	}
	if o.RedisTimeout <= 0 {
		add("--redis-timeout must be greater than 0")
	}
	if _, err := parseLevel(o.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if o.LogFormat != "json" && o.LogFormat != "text" {
		add("--log-format %q: want json or text", o.LogFormat)
	}
	for flag, f := range map[string]string{"--policy": o.PolicyFile, "--upstream-ca-file": o.UpstreamCAFile, "--client-ca-file": o.ClientCAFile,
		"--front-proxy-cert-file": o.FrontProxyCertFile, "--front-proxy-key-file": o.FrontProxyKeyFile,
		"--tls-cert-file": o.TLSCertFile, "--tls-private-key-file": o.TLSPrivateKeyFile, "--kubeconfig": o.Kubeconfig,
		"--redis-password-file": o.RedisPasswordFile, "--webhook-client-ca-file": o.WebhookClientCAFile, "--redis-ca-file": o.RedisCAFile, "--redis-cert-file": o.RedisCertFile, "--redis-key-file": o.RedisKeyFile} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			add("%s: %v", flag, err)
		}
	}
	return errors.Join(sortErrors(errs)...)
}

// sortErrors gives the map-driven checks a stable order.
func sortErrors(errs []error) []error {
	for i := 1; i < len(errs); i++ {
		for j := i; j > 0 && errs[j].Error() < errs[j-1].Error(); j-- {
			errs[j], errs[j-1] = errs[j-1], errs[j]
		}
	}
	return errs
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// Config is the completed, typed configuration of serve.
type Config struct {
	Options  ServeOptions
	Logger   *slog.Logger
	Upstream *url.URL
	// RedisPassword is read from --redis-password-file ("" when not given).
	RedisPassword string
	// Kube reaches the cluster for TokenReview, Overrides and Events: from
	// --kubeconfig, else the in-cluster config; nil when neither exists.
	Kube *rest.Config
}

// Complete turns validated options into typed configuration.
func (o *ServeOptions) Complete() (*Config, error) {
	level, err := parseLevel(o.LogLevel)
	if err != nil {
		return nil, err
	}
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewJSONHandler(os.Stderr, hopts)
	if o.LogFormat == "text" {
		h = slog.NewTextHandler(os.Stderr, hopts)
	}
	c := &Config{Options: *o, Logger: slog.New(h)}
	if o.Upstream != "" {
		if c.Upstream, err = url.Parse(o.Upstream); err != nil {
			return nil, fmt.Errorf("failed to parse --upstream: %w", err)
		}
	}
	if o.RedisPasswordFile != "" {
		b, err := os.ReadFile(o.RedisPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("failed to read --redis-password-file: %w", err)
		}
		c.RedisPassword = strings.TrimRight(string(b), "\r\n")
	}
	switch {
	case o.Kubeconfig != "":
		if c.Kube, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig); err != nil {
			return nil, fmt.Errorf("failed to load --kubeconfig: %w", err)
		}
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		if c.Kube, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("failed to load the in-cluster config: %w", err)
		}
	}
	if c.Kube != nil {
		c.Kube.UserAgent = "kubedefender"
	}
	return c, nil
}
