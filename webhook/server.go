package webhook

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubedefender/kubedefender/pki"
	"github.com/kubedefender/kubedefender/serving"
)

// ServerConfig configures the webhook's listener.
type ServerConfig struct {
	// Addr to listen on, e.g. ":8443" or "127.0.0.1:0"; required.
	Addr string
	// Handler serves the requests, normally a *Handler; required.
	Handler http.Handler
	// Certificates supplies the serving certificate; required. Its owner
	// runs its reload loop (serving.CertKey.Run).
	Certificates *serving.CertKey
	// ClientAuth, when set, authenticates callers by client certificate: a
	// handshake without a certificate it accepts fails, and no request on
	// that connection reaches Handler. nil accepts any caller.
	ClientAuth *ClientAuth
	// ShutdownTimeout is how long in-flight reviews may take to finish when
	// the server's Run ends; zero means serving.DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Logger receives start and stop lines; nil discards.
	Logger *slog.Logger
	// Registerer takes
	// kubedefender_certificate_expiry_timestamp_seconds{listener="webhook"};
	// nil registers nothing.
	Registerer prometheus.Registerer
	// EnableHTTP2 offers HTTP/2 in the TLS handshake. It is off by default,
	// as in controller-runtime's webhook server: HTTP/2 stream floods
	// (CVE-2023-44487, CVE-2023-39325) make it the riskier protocol, and
	// over HTTP/1.1 keep-alive connections each review is served on its
	// connection's goroutine instead of a fresh one per stream, which is
	// cheaper. The API server opens as many connections as it needs.
	EnableHTTP2 bool
}

// How long a caller may take to send a request's headers, and the whole
// request. The API server sends a review at once and waits for the answer at
// most its webhook timeout (30s at most, 5s by default); a caller that
// trickles a body holds what it sent (readBody) for readTimeout at most.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
)

// NewServer builds the webhook's listener: TLS 1.2 or later with the
// reloading serving pair, client certificates checked by ClientAuth, and the
// timeouts above. It listens at once, so that a port taken or a bad address
// fails at startup; a webhook configuration calls Path on the address it
// listens at (serving.Server.Addr).
func NewServer(cfg ServerConfig) (*serving.Server, error) {
	if cfg.Handler == nil || cfg.Certificates == nil {
		return nil, errors.New("failed to build webhook server: a handler and certificates are required")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: cfg.Certificates.GetCertificate}
	if cfg.ClientAuth != nil {
		cfg.ClientAuth.configure(tc)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(pki.ExpiryGauge("webhook", cfg.Certificates.Leaf)); err != nil {
			return nil, fmt.Errorf("failed to register certificate metrics: %w", err)
		}
	}
	return serving.New(serving.Config{
		Name: "webhook", Addr: cfg.Addr, Handler: cfg.Handler, TLS: tc, EnableHTTP2: cfg.EnableHTTP2,
		ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout, WriteTimeout: 30 * time.Second, IdleTimeout: 90 * time.Second,
		ShutdownTimeout: cfg.ShutdownTimeout, Logger: cfg.Logger, LogAttrs: []any{"path", Path, "clientAuth", cfg.ClientAuth != nil},
	})
}
