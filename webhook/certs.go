package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubedefender/kubedefender/filewatch"
	"github.com/kubedefender/kubedefender/pki"
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
		if err := cfg.Registerer.Register(pki.ExpiryGauge("webhook", c.Current)); err != nil {
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

// ClientAuthConfig configures a ClientAuth.
type ClientAuthConfig struct {
	// CAFile is the PEM bundle of CAs whose client certificates may call
	// the webhook (the CA of the API server's client certificate); required.
	CAFile string
	// AllowedNames, when not empty, are the only common names accepted in
	// a client certificate, as kube-apiserver's --requestheader-allowed-names.
	AllowedNames []string
	// Interval re-reads the file this often even without file events; zero
	// means one minute.
	Interval time.Duration
	// Debounce groups the burst of events one rotation makes; zero means 100ms.
	Debounce time.Duration
	// Logger receives one line per reload; nil discards.
	Logger *slog.Logger
	// Registerer takes kubedefender_webhook_client_ca_reloads_total and
	// kubedefender_webhook_client_certificate_rejections_total; nil
	// registers nothing.
	Registerer prometheus.Registerer
}

// Reasons of kubedefender_webhook_client_certificate_rejections_total.
const (
	RejectNoCertificate  = "no_certificate"
	RejectUntrusted      = "untrusted"
	RejectNameNotAllowed = "name_not_allowed"
)

// ClientAuth authenticates the webhook's callers by client certificate: the
// TLS handshake of a caller without a certificate signed by the CA bundle in
// CAFile (or whose common name is not in AllowedNames) fails, so its request
// never reaches the handler. The bundle is reloaded when the file changes; a
// bad edit is refused and the running bundle stays.
//
// The checks are crypto/tls's for tls.RequireAndVerifyClientCert (a chain to
// the bundle, valid now, with the client-auth key usage) made in
// tls.Config.VerifyConnection rather than by crypto/tls itself, for two
// reasons: each refusal is counted by reason, and a resumed TLS session is
// verified again against the current bundle, so a CA removed from the file
// stops being accepted on new handshakes, resumed or not. Connections
// already established stay open until they close, as with kube-apiserver's
// own client CA.
type ClientAuth struct {
	cfg      ClientAuthConfig
	log      *slog.Logger
	allowed  map[string]bool
	pool     atomic.Pointer[x509.CertPool]
	reloads  *prometheus.CounterVec
	rejected *prometheus.CounterVec

	mu    sync.Mutex
	caPEM []byte
}

// NewClientAuth loads the CA bundle; it fails when the file holds no
// certificate.
func NewClientAuth(cfg ClientAuthConfig) (*ClientAuth, error) {
	if cfg.CAFile == "" {
		return nil, errors.New("failed to load the webhook client CA: a CA file is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	c := &ClientAuth{cfg: cfg, log: cfg.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.AllowedNames) > 0 {
		c.allowed = make(map[string]bool, len(cfg.AllowedNames))
		for _, n := range cfg.AllowedNames {
			c.allowed[n] = true
		}
	}
	c.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kubedefender", Subsystem: "webhook", Name: "client_ca_reloads_total",
		Help: "Webhook client CA reloads by result: success (a new bundle verifies callers) or failure (the running bundle stays).",
	}, []string{"result"})
	c.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kubedefender", Subsystem: "webhook", Name: "client_certificate_rejections_total",
		Help: "TLS handshakes the webhook refused by reason: no_certificate, untrusted (not signed by the client CA, expired, or not for client auth) or name_not_allowed.",
	}, []string{"reason"})
	for _, r := range []string{"success", "failure"} {
		c.reloads.WithLabelValues(r)
	}
	for _, r := range []string{RejectNoCertificate, RejectUntrusted, RejectNameNotAllowed} {
		c.rejected.WithLabelValues(r)
	}
	if _, err := c.load(); err != nil {
		return nil, err
	}
	if cfg.Registerer != nil {
		for _, m := range []prometheus.Collector{c.reloads, c.rejected} {
			if err := cfg.Registerer.Register(m); err != nil {
				return nil, fmt.Errorf("failed to register client CA metrics: %w", err)
			}
		}
	}
	return c, nil
}

// ParseCABundle parses a PEM bundle of CA certificates; it fails when the
// data holds anything but certificates, or none.
func ParseCABundle(data []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, errors.New("failed to parse the CA bundle: it holds data that is not PEM")
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("failed to parse the CA bundle: PEM block %d is a %q, want CERTIFICATE", n+1, block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("failed to parse the CA bundle: certificate %d: %w", n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("failed to parse the CA bundle: it holds no PEM certificate")
	}
	return pool, nil
}

// Reload reads the file now. An unchanged bundle is a no-op; a bad one keeps
// the running bundle and returns why.
func (c *ClientAuth) Reload() error {
	changed, err := c.load()
	switch {
	case err != nil:
		c.reloads.WithLabelValues("failure").Inc()
		c.log.Error("webhook client CA reload refused; the running CA stays", "file", c.cfg.CAFile, "err", err)
		return err
	case changed:
		c.reloads.WithLabelValues("success").Inc()
		c.log.Info("webhook client CA reloaded", "file", c.cfg.CAFile)
	}
	return nil
}

func (c *ClientAuth) load() (changed bool, err error) {
	data, err := os.ReadFile(c.cfg.CAFile)
	if err != nil {
		return false, fmt.Errorf("failed to read the webhook client CA: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if bytes.Equal(data, c.caPEM) {
		return false, nil
	}
	pool, err := ParseCABundle(data)
	if err != nil {
		return false, fmt.Errorf("%s: %w", c.cfg.CAFile, err)
	}
	c.caPEM = data
	c.pool.Store(pool)
	return true, nil
}

// Run watches the file's directory until ctx is done, reloading on change and
// every Interval.
func (c *ClientAuth) Run(ctx context.Context) error {
	return filewatch.Run(ctx, filewatch.Config{
		Files: []string{c.cfg.CAFile}, Debounce: c.cfg.Debounce, Resync: c.cfg.Interval,
		Reload: func() { _ = c.Reload() }, Logger: c.log,
	})
}

// configure makes cfg ask every caller for a client certificate and refuse
// the handshake of any caller ClientAuth does not accept.
func (c *ClientAuth) configure(cfg *tls.Config) {
	// Requested, not required, by crypto/tls: verifyConnection requires it,
	// so that a missing certificate is counted like any other refusal.
	cfg.ClientAuth = tls.RequestClientCert
	cfg.VerifyConnection = c.verifyConnection
}

// verifyConnection is tls.Config.VerifyConnection: it runs at the end of every
// handshake, resumptions included, after crypto/tls has checked that the
// client holds the key of the certificate it sent.
func (c *ClientAuth) verifyConnection(cs tls.ConnectionState) error {
	reason, err := c.verify(cs.PeerCertificates, time.Now())
	if err != nil {
		c.rejected.WithLabelValues(reason).Inc()
		return err
	}
	return nil
}

// verify checks a client's certificate chain (leaf first) at now. It returns
// the rejection reason with the error.
func (c *ClientAuth) verify(chain []*x509.Certificate, now time.Time) (reason string, err error) {
	if len(chain) == 0 {
		return RejectNoCertificate, errors.New("kubedefender webhook: a client certificate is required and none was sent")
	}
	leaf := chain[0]
	opts := x509.VerifyOptions{
		Roots:         c.pool.Load(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, ic := range chain[1:] {
		opts.Intermediates.AddCert(ic)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return RejectUntrusted, fmt.Errorf("kubedefender webhook: client certificate %q refused: %w", leaf.Subject.CommonName, err)
	}
	if c.allowed != nil && !c.allowed[leaf.Subject.CommonName] {
		return RejectNameNotAllowed, fmt.Errorf("kubedefender webhook: client certificate common name %q is not among the allowed names", leaf.Subject.CommonName)
	}
	return "", nil
}
