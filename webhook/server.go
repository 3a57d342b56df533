package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Addr to listen on, e.g. ":8443" or "127.0.0.1:0"; required.
	Addr string
	// Handler serves the requests, normally a *Handler; required.
	Handler http.Handler
	// Certificates supplies the serving certificate; required.
	Certificates *CertReloader
	// ClientAuth, when set, authenticates callers by client certificate: a
	// handshake without a certificate it accepts fails, and no request on
	// that connection reaches Handler. nil accepts any caller.
	ClientAuth *ClientAuth
	// ShutdownTimeout is how long in-flight reviews may take to finish when
	// Run's context ends; zero means 15s.
	ShutdownTimeout time.Duration
	// Logger receives start and stop lines; nil discards.
	Logger *slog.Logger
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

// Server serves a handler over TLS with a reloading certificate.
type Server struct {
	cfg ServerConfig
	ln  net.Listener
	srv *http.Server
	log *slog.Logger
}

// NewServer listens on cfg.Addr at once, so that a port taken or a bad address
// fails at startup and Addr is known before Run.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Handler == nil || cfg.Certificates == nil {
		return nil, errors.New("failed to build webhook server: a handler and certificates are required")
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("failed to listen on %s: %w", cfg.Addr, err)
	}
	s := &Server{cfg: cfg, ln: ln, log: cfg.Logger}
	s.srv = &http.Server{
		Handler: cfg.Handler,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: cfg.Certificates.GetCertificate,
		},
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	if cfg.ClientAuth != nil {
		cfg.ClientAuth.configure(s.srv.TLSConfig)
	}
	if !cfg.EnableHTTP2 {
		// A non-nil, empty map keeps net/http from configuring HTTP/2.
		s.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is https://ADDR/validate, the url of a webhook configuration that
// reaches this server on its listening address.
func (s *Server) URL() string { return "https://" + s.ln.Addr().String() + Path }

// Run serves until ctx is done, reloading the certificate (and the client
// CA) as their files change, then shuts down gracefully. It returns nil after
// a clean shutdown. Run must be called at most once; the listener is closed
// when it returns.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watchers := []func(context.Context) error{s.cfg.Certificates.Run}
	if s.cfg.ClientAuth != nil {
		watchers = append(watchers, s.cfg.ClientAuth.Run)
	}
	// A watcher returns early only when it cannot start; its error stops
	// the server.
	watchErr := make(chan error, len(watchers))
	var watching sync.WaitGroup
	for _, w := range watchers {
		watching.Go(func() {
			if err := w(ctx); err != nil {
				watchErr <- err
			}
		})
	}
	var serveErr error
	serveDone := make(chan struct{})
	go func() { defer close(serveDone); serveErr = s.srv.ServeTLS(s.ln, "", "") }()
	s.log.Info("webhook serving", "addr", s.ln.Addr().String(), "path", Path, "clientAuth", s.cfg.ClientAuth != nil)
	select {
	case <-serveDone:
		cancel()
		watching.Wait()
		return fmt.Errorf("failed to serve the webhook: %w", serveErr)
	case err := <-watchErr:
		cancel()
		_ = s.srv.Close()
		<-serveDone
		watching.Wait()
		return err
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer scancel()
	err := s.srv.Shutdown(sctx)
	if err != nil {
		// Connections still busy after the grace period are cut.
		_ = s.srv.Close()
	}
	<-serveDone // ServeTLS returns http.ErrServerClosed
	cancel()
	watching.Wait()
	if err != nil {
		return fmt.Errorf("failed to shut down the webhook: %w", err)
	}
	s.log.Info("webhook stopped")
	return nil
}
