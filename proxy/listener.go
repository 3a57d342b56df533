package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/kubedefender/kubedefender/serving"
)

// ServerConfig returns the configuration of the proxy's listener on addr:
// TLS with the serving pair (Config.Serving), client certificates requested
// (the authenticator verifies them, so a rotated client CA applies without a
// restart), HTTP/2 and HTTP/1.1, no write timeout (watches and exec streams
// last), a header read timeout and an idle timeout. Once the listener has
// stopped, idle upstream connections are closed. It fails without a serving
// pair.
func (p *Proxy) ServerConfig(addr string) (serving.Config, error) {
	if p.cfg.Serving == nil {
		return serving.Config{}, errors.New("failed to configure the proxy's listener: no serving certificate configured")
	}
	return serving.Config{
		Name: "proxy", Addr: addr, Handler: p.handler, EnableHTTP2: true,
		TLS: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: p.cfg.Serving.GetCertificate,
			ClientAuth:     tls.RequestClientCert,
			NextProtos:     []string{"h2", "http/1.1"},
		},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    1 << 20,
		ShutdownTimeout:   p.cfg.ShutdownTimeout,
		Logger:            p.log,
		LogAttrs: []any{"upstream", p.cfg.Upstream.String(), "authMode", string(p.cfg.AuthMode),
			"budgetsAt", map[bool]string{true: "proxy", false: "webhook"}[p.cfg.BudgetsAtProxy]},
		AfterShutdown: func() {
			for _, t := range []*http.Transport{p.upstreamTransport, p.frontTransport, p.upstreamUpgrade, p.frontUpgrade} {
				t.CloseIdleConnections()
			}
		},
	}, nil
}

// Run keeps the certificates the proxy reads from files fresh until ctx is
// done: the client CA (dynamiccertificates' own controller, which the
// authenticator listens to) and the front-proxy pair. The serving pair is
// Config.Serving's owner's to run. It returns an error only when a watch
// cannot start.
func (p *Proxy) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if p.clientCA != nil {
		wg.Go(func() { p.clientCA.Run(ctx, 1) })
	}
	var err error
	if p.frontCert != nil {
		err = p.frontCert.Run(ctx) // until ctx is done, unless the watch cannot start
	} else {
		<-ctx.Done()
	}
	cancel()
	wg.Wait()
	return err
}
