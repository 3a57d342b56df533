package serving

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// DefaultShutdownTimeout is how long in-flight requests may take to finish
// when Run's context ends, unless Config.ShutdownTimeout says otherwise.
const DefaultShutdownTimeout = 15 * time.Second

// Config configures a Server. Timeouts left zero are net/http's (none).
type Config struct {
	// Name is the listener's name in logs and errors ("webhook", "proxy",
	// "metrics"); required.
	Name string
	// Addr to listen on, e.g. ":8443" or "127.0.0.1:0"; required.
	Addr string
	// Handler serves the requests; required.
	Handler http.Handler
	// TLS, when set, serves HTTPS with this configuration; its certificate
	// normally comes from a CertKey (GetCertificate). nil serves plain HTTP.
	TLS *tls.Config
	// EnableHTTP2 offers HTTP/2 in the TLS handshake; without it the server
	// speaks HTTP/1.1 only, whatever the client offers.
	EnableHTTP2 bool

	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int

	// ShutdownTimeout is how long in-flight requests may take to finish when
	// Run's context ends; zero means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Logger receives the start and stop lines and net/http's own errors (at
	// debug level); nil discards.
	Logger *slog.Logger
	// LogAttrs are added to the start line (key, value pairs).
	LogAttrs []any
	// AfterShutdown, when set, is called once when Run returns, after every
	// connection has ended (the proxy closes its idle upstream connections).
	AfterShutdown func()
}

// Server is one listener of kubedefender serve: the webhook, the proxy and
// the metrics endpoint each run one. It listens when it is built, serves in
// Run and shuts down gracefully when Run's context ends.
type Server struct {
	cfg Config
	ln  net.Listener
	srv *http.Server
	log *slog.Logger
}

// New listens on cfg.Addr at once, so that a port taken or a bad address
// fails at startup and Addr is known before Run.
func New(cfg Config) (*Server, error) {
	if cfg.Name == "" || cfg.Handler == nil {
		return nil, errors.New("failed to build a server: a name and a handler are required")
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("failed to listen on %s for the %s: %w", cfg.Addr, cfg.Name, err)
	}
	s := &Server{cfg: cfg, ln: ln, log: cfg.Logger}
	s.srv = &http.Server{
		Handler:           cfg.Handler,
		TLSConfig:         cfg.TLS,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	if cfg.TLS != nil && !cfg.EnableHTTP2 {
		// A non-nil, empty map keeps net/http from configuring HTTP/2.
		s.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx is done, then shuts down: it stops accepting, lets
// in-flight requests finish for ShutdownTimeout and cuts the connections
// still open after it (a proxy always has watches open: cutting them is how
// they end, and clients reconnect; it is logged, not a failure). It returns an
// error when serving failed or the shutdown failed for any other reason. Run must be called at
// most once; the listener is closed when it returns.
func (s *Server) Run(ctx context.Context) error {
	if s.cfg.AfterShutdown != nil {
		defer s.cfg.AfterShutdown()
	}
	served := make(chan error, 1)
	go func() {
		if s.cfg.TLS != nil {
			served <- s.srv.ServeTLS(s.ln, "", "")
			return
		}
		served <- s.srv.Serve(s.ln)
	}()
	s.log.Info(s.cfg.Name+" serving", append([]any{"addr", s.ln.Addr().String(), "tls", s.cfg.TLS != nil}, s.cfg.LogAttrs...)...)
	select {
	case err := <-served:
		return fmt.Errorf("failed to serve the %s: %w", s.cfg.Name, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		// Connections still busy after the grace period are cut: the same
		// end for every listener, and not a failure of the process.
		s.log.Warn(s.cfg.Name+" cut the connections still open after the shutdown timeout", "shutdownTimeout", s.cfg.ShutdownTimeout.String())
		err = s.srv.Close()
	} else if err != nil {
		_ = s.srv.Close()
	}
	// Serve returns http.ErrServerClosed once Shutdown or Close has begun.
	if serr := <-served; err == nil && !errors.Is(serr, http.ErrServerClosed) {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("failed to shut down the %s within %s: %w", s.cfg.Name, s.cfg.ShutdownTimeout, err)
	}
	s.log.Info(s.cfg.Name + " stopped")
	return nil
}
