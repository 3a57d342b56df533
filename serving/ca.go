package serving

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
)

// CAConfig configures a CA.
type CAConfig struct {
	// Purpose names the bundle in logs ("webhook-client-ca"); required.
	Purpose string
	// File is the PEM bundle of CA certificates; required.
	File string
	Watch
	// Logger receives one line per reload; nil discards.
	Logger *slog.Logger
	// Registerer, when set, takes
	// kubedefender_<MetricsSubsystem>_client_ca_reloads_total.
	Registerer       prometheus.Registerer
	MetricsSubsystem string
}

// CA is a bundle of CA certificates on disk that verifies client
// certificates, reloaded when the file changes; see the package doc. It is
// safe for concurrent use.
//
// Every load is checked by ParseCABundle before the content object takes it,
// which is stricter than dynamiccertificates alone (that skips blocks that
// are not certificates and text after the last one): a bundle edited into
// anything but certificates is refused whole.
type CA struct {
	cfg     CAConfig
	log     *slog.Logger
	content *dynamiccertificates.DynamicFileCAContent
	reloads *prometheus.CounterVec

	mu      sync.Mutex // one load at a time
	changed bool       // set by Enqueue during a load
}

// NewCA loads the bundle; it fails when the file holds no usable bundle.
func NewCA(cfg CAConfig) (*CA, error) {
	if cfg.File == "" {
		return nil, fmt.Errorf("failed to load the %s: a CA file is required", cfg.Purpose)
	}
	if err := checkCAFile(cfg.File); err != nil {
		return nil, fmt.Errorf("failed to load the %s: %w", cfg.Purpose, err)
	}
	content, err := dynamiccertificates.NewDynamicCAContentFromFile(cfg.Purpose, cfg.File)
	if err != nil {
		return nil, fmt.Errorf("failed to load the %s %s: %w", cfg.Purpose, cfg.File, err)
	}
	c := &CA{cfg: cfg, log: cfg.Logger, content: content}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	content.AddListener(c)
	if c.reloads, err = newReloadCounter(cfg.Registerer, cfg.MetricsSubsystem, "client_ca_reloads_total",
		"Client CA reloads by result: success (a new bundle verifies callers) or failure (the running bundle stays).", "client CA"); err != nil {
		return nil, err
	}
	return c, nil
}

func checkCAFile(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("failed to read the CA bundle: %w", err)
	}
	if _, err := ParseCABundle(data); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}

// Enqueue is dynamiccertificates.Listener: the content object calls it, from
// within a load, when it has taken a new bundle.
func (c *CA) Enqueue() { c.changed = true }

// Roots returns the current bundle as a pool.
func (c *CA) Roots() *x509.CertPool {
	o, _ := c.content.VerifyOptions()
	return o.Roots
}

// Reload reads the file now. An unchanged bundle is a no-op; a bad one keeps
// the running bundle and returns why.
func (c *CA) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.changed = false
	err := checkCAFile(c.cfg.File)
	if err == nil {
		err = c.content.RunOnce(context.Background())
	}
	switch {
	case err != nil:
		c.reloads.WithLabelValues(ReloadFailure).Inc()
		c.log.Error("client CA reload refused; the running CA stays", "ca", c.cfg.Purpose, "file", c.cfg.File, "err", err)
		return fmt.Errorf("failed to reload the %s: %w", c.cfg.Purpose, err)
	case c.changed:
		c.reloads.WithLabelValues(ReloadSuccess).Inc()
		c.log.Info("client CA reloaded", "ca", c.cfg.Purpose, "file", c.cfg.File)
	}
	return nil
}

// Run watches the file until ctx is done, reloading on change and every
// Interval. It returns an error only when the watch cannot start.
func (c *CA) Run(ctx context.Context) error {
	return c.cfg.run(ctx, []string{c.cfg.File}, func() { _ = c.Reload() }, c.log)
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
