package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubedefender/kubedefender/filewatch"
)

// CertConfig configures a CertReloader.
type CertConfig struct {
	// CertFile and KeyFile are the PEM serving pair; required.
	CertFile, KeyFile string
	// Interval re-reads the files this often even without file events (a
	// missed event, a file system without inotify); zero means one minute.
	Interval time.Duration
	// Debounce groups the burst of events one rotation makes (a Secret
	// volume swaps a symlink; cert-manager writes two files); zero means 100ms.
	Debounce time.Duration
	// Logger receives one line per reload; nil discards.
	Logger *slog.Logger
	// Registerer takes kubedefender_webhook_certificate_reloads_total; nil
	// registers nothing.
	Registerer prometheus.Registerer
}

// CertReloader serves the current certificate of a serving pair on disk and
// picks up a rotated pair without a restart.
//
// It is a small file watcher rather than apiserver's
// dynamiccertificates.DynamicServingCertificateController: the job is one
// pair, and this way reloads are logged through slog and counted on the
// injected registry instead of klog and legacy metrics. A new pair is read and
// checked (the key matches the certificate) before it is swapped in
// atomically; a half-written or mismatched pair is refused and the running
// one stays, so a rotation caught between its two file writes heals on the
// next event or Interval.
type CertReloader struct {
	cfg     CertConfig
	log     *slog.Logger
	current atomic.Pointer[tls.Certificate]
	reloads *prometheus.CounterVec

	mu      sync.Mutex
	certPEM []byte
	keyPEM  []byte
}

// NewCertReloader loads the pair; it fails when the pair cannot be used.
func NewCertReloader(cfg CertConfig) (*CertReloader, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("failed to load serving certificate: both a certificate and a key file are required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	c := &CertReloader{cfg: cfg, log: cfg.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kubedefender", Subsystem: "webhook", Name: "certificate_reloads_total",
		Help: "Serving certificate reloads by result: success (a new pair is served) or failure (the running pair stays).",
	}, []string{"result"})
	c.reloads.WithLabelValues("success")
	c.reloads.WithLabelValues("failure")
	if _, err := c.load(); err != nil {
		return nil, err
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(c.reloads); err != nil {
			return nil, fmt.Errorf("failed to register certificate metrics: %w", err)
		}
	}
	return c, nil
}

// GetCertificate returns the current pair; it is tls.Config.GetCertificate.
func (c *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.current.Load(), nil
}

// Current returns the leaf certificate being served.
func (c *CertReloader) Current() *x509.Certificate { return c.current.Load().Leaf }

// Reload reads the files now. An unchanged pair is a no-op; a bad pair keeps
// the running one and returns why.
func (c *CertReloader) Reload() error {
	changed, err := c.load()
	switch {
	case err != nil:
		c.reloads.WithLabelValues("failure").Inc()
		c.log.Error("serving certificate reload refused; the running certificate stays", "cert", c.cfg.CertFile, "err", err)
		return err
	case changed:
		c.reloads.WithLabelValues("success").Inc()
		leaf := c.Current()
		c.log.Info("serving certificate reloaded", "cert", c.cfg.CertFile, "subject", leaf.Subject.String(),
			"dnsNames", leaf.DNSNames, "notAfter", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

func (c *CertReloader) load() (changed bool, err error) {
	certPEM, err := os.ReadFile(c.cfg.CertFile)
	if err != nil {
		return false, fmt.Errorf("failed to read serving certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(c.cfg.KeyFile)
	if err != nil {
		return false, fmt.Errorf("failed to read serving key: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if bytes.Equal(certPEM, c.certPEM) && bytes.Equal(keyPEM, c.keyPEM) {
		return false, nil
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false, fmt.Errorf("failed to load serving pair %s, %s: %w", c.cfg.CertFile, c.cfg.KeyFile, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return false, fmt.Errorf("failed to parse serving certificate %s: %w", c.cfg.CertFile, err)
		}
	}
	c.certPEM, c.keyPEM = certPEM, keyPEM
	c.current.Store(&pair)
	return true, nil
}

// Run watches the files' directories until ctx is done, reloading on change
// and every Interval.
func (c *CertReloader) Run(ctx context.Context) error {
	return filewatch.Run(ctx, filewatch.Config{
		Files: []string{c.cfg.CertFile, c.cfg.KeyFile}, Debounce: c.cfg.Debounce, Resync: c.cfg.Interval,
		Reload: func() { _ = c.Reload() }, Logger: c.log,
	})
}
