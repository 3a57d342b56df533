package serving

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"

	"github.com/kubedefender/kubedefender/filewatch"
)

// Defaults of the reload loops.
const (
	// DefaultInterval re-reads the files this often even without file
	// events (a missed event, a file system without inotify).
	DefaultInterval = time.Minute
	// DefaultDebounce groups the burst of events one rotation makes (a
	// Secret volume swaps a symlink; cert-manager writes two files).
	DefaultDebounce = 100 * time.Millisecond
)

// Reload results, the values of the result label of the reload counters.
const (
	ReloadSuccess = "success"
	ReloadFailure = "failure"
)

// Watch configures how files are watched; the zero value is the defaults.
type Watch struct {
	// Interval re-reads the files this often even without file events;
	// zero means DefaultInterval.
	Interval time.Duration
	// Debounce groups a burst of events; zero means DefaultDebounce.
	Debounce time.Duration
}

func (w Watch) run(ctx context.Context, files []string, reload func(), log *slog.Logger) error {
	if w.Interval <= 0 {
		w.Interval = DefaultInterval
	}
	if w.Debounce <= 0 {
		w.Debounce = DefaultDebounce
	}
	return filewatch.Run(ctx, filewatch.Config{Files: files, Debounce: w.Debounce, Resync: w.Interval, Reload: reload, Logger: log})
}

// CertKeyConfig configures a CertKey.
type CertKeyConfig struct {
	// Purpose names the pair in logs ("serving", "front-proxy"); required.
	Purpose string
	// CertFile and KeyFile are the PEM pair; required.
	CertFile, KeyFile string
	Watch
	// Logger receives one line per reload; nil discards.
	Logger *slog.Logger
	// Registerer, when set, takes
	// kubedefender_<MetricsSubsystem>_certificate_reloads_total.
	Registerer       prometheus.Registerer
	MetricsSubsystem string
}

// CertKey is a certificate and key pair on disk, served (or presented as a
// client certificate) from memory and reloaded when the files change; see
// the package doc. It is safe for concurrent use.
type CertKey struct {
	cfg     CertKeyConfig
	log     *slog.Logger
	content *dynamiccertificates.DynamicCertKeyPairContent
	current atomic.Pointer[tls.Certificate]
	reloads *prometheus.CounterVec

	mu      sync.Mutex // one load at a time
	changed bool       // set by Enqueue during a load
}

// NewCertKey loads the pair; it fails when the pair cannot be used.
func NewCertKey(cfg CertKeyConfig) (*CertKey, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, fmt.Errorf("failed to load the %s pair: both a certificate and a key file are required", cfg.Purpose)
	}
	content, err := dynamiccertificates.NewDynamicServingContentFromFiles(cfg.Purpose, cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("failed to load the %s pair %s, %s: %w", cfg.Purpose, cfg.CertFile, cfg.KeyFile, err)
	}
	c := &CertKey{cfg: cfg, log: cfg.Logger, content: content}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if err := c.parse(); err != nil {
		return nil, err
	}
	content.AddListener(c)
	if c.reloads, err = newReloadCounter(cfg.Registerer, cfg.MetricsSubsystem, "certificate_reloads_total",
		"Serving certificate reloads by result: success (a new pair is served) or failure (the running pair stays).", "certificate"); err != nil {
		return nil, err
	}
	return c, nil
}

// newReloadCounter makes the reloads counter of one watched file, both
// results at 0, and registers it on reg when reg is set; what names the
// metrics in the registration error.
func newReloadCounter(reg prometheus.Registerer, subsystem, name, help, what string) (*prometheus.CounterVec, error) {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kubedefender", Subsystem: subsystem, Name: name, Help: help}, []string{"result"})
	v.WithLabelValues(ReloadSuccess)
	v.WithLabelValues(ReloadFailure)
	if reg != nil {
		if err := reg.Register(v); err != nil {
			return nil, fmt.Errorf("failed to register %s metrics: %w", what, err)
		}
	}
	return v, nil
}

// parse makes the content object's current pair the one served.
func (c *CertKey) parse() error {
	certPEM, keyPEM := c.content.CurrentCertKeyContent()
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("failed to load the %s pair %s: %w", c.cfg.Purpose, c.cfg.CertFile, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return fmt.Errorf("failed to parse the %s certificate %s: %w", c.cfg.Purpose, c.cfg.CertFile, err)
		}
	}
	c.current.Store(&pair)
	return nil
}

// Enqueue is dynamiccertificates.Listener: the content object calls it, from
// within a load, when it has taken a new pair.
func (c *CertKey) Enqueue() { c.changed = true }

// GetCertificate returns the current pair; it is tls.Config.GetCertificate.
func (c *CertKey) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.current.Load(), nil
}

// GetClientCertificate returns the current pair; it is
// tls.Config.GetClientCertificate.
func (c *CertKey) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return c.current.Load(), nil
}

// Leaf returns the certificate being served.
func (c *CertKey) Leaf() *x509.Certificate { return c.current.Load().Leaf }

// Reload reads the files now. An unchanged pair is a no-op; a bad pair keeps
// the running one and returns why.
func (c *CertKey) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.changed = false
	err := c.content.RunOnce(context.Background())
	if err == nil && c.changed {
		err = c.parse()
	}
	switch {
	case err != nil:
		c.reloads.WithLabelValues(ReloadFailure).Inc()
		c.log.Error("certificate reload refused; the running pair stays", "pair", c.cfg.Purpose, "cert", c.cfg.CertFile, "err", err)
		return fmt.Errorf("failed to reload the %s pair: %w", c.cfg.Purpose, err)
	case c.changed:
		c.reloads.WithLabelValues(ReloadSuccess).Inc()
		leaf := c.Leaf()
		c.log.Info("certificate reloaded", "pair", c.cfg.Purpose, "cert", c.cfg.CertFile, "subject", leaf.Subject.String(),
			"dnsNames", leaf.DNSNames, "notAfter", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Run watches the files until ctx is done, reloading on change and every
// Interval. It returns an error only when the watch cannot start.
func (c *CertKey) Run(ctx context.Context) error {
	return c.cfg.run(ctx, []string{c.cfg.CertFile, c.cfg.KeyFile}, func() { _ = c.Reload() }, c.log)
}
