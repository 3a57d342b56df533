package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"
)

// buildTransports makes the two upstream transports: a plain one (TLS to the
// upstream, no client certificate: passthrough credentials) and one that
// presents the front-proxy client certificate (identity in X-Remote-*).
// Both speak HTTP/2 to the upstream. Upgrade requests (SPDY, WebSocket)
// cannot travel over HTTP/2, and net/http would put them on a pooled HTTP/2
// connection, so each has an HTTP/1.1-only twin for them.
func (p *Proxy) buildTransports() error {
	base, err := p.upstreamTLS()
	if err != nil {
		return err
	}
	front := base.Clone()
	if p.frontCert != nil {
		front.GetClientCertificate = p.frontCert.GetClientCertificate
	}
	p.upstreamTransport = p.newTransport(base.Clone())
	p.frontTransport = p.newTransport(front.Clone())
	p.upstreamUpgrade = p.newHTTP1Transport(base.Clone())
	p.frontUpgrade = p.newHTTP1Transport(front.Clone())
	return nil
}

func (p *Proxy) newHTTP1Transport(tc *tls.Config) *http.Transport {
	tc.NextProtos = []string{"http/1.1"}
	t := p.newTransport(tc)
	t.ForceAttemptHTTP2 = false
	t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	return t
}

func (p *Proxy) newTransport(tc *tls.Config) *http.Transport {
	d := &net.Dialer{Timeout: p.cfg.DialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   p.cfg.DialTimeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1000,
		MaxIdleConnsPerHost:   1000,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: p.cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		// The client's Accept-Encoding goes through as is; the proxy never
		// decompresses.
		DisableCompression: true,
	}
}

// timedTransport picks the transport a request needs and records the
// upstream's own time (until response headers) in the request state.
type timedTransport struct{ p *Proxy }

func (t timedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	st, _ := r.Context().Value(stateKey{}).(*reqState)
	upgrade := headerValue(r.Header, "Upgrade") != ""
	front := st != nil && st.forwardIdentity
	var tr http.RoundTripper
	switch {
	case front && upgrade:
		tr = t.p.frontUpgrade
	case front:
		tr = t.p.frontTransport
	case upgrade:
		tr = t.p.upstreamUpgrade
	default:
		tr = t.p.upstreamTransport
	}
	began := time.Now()
	resp, err := tr.RoundTrip(r)
	if st != nil {
		st.upstream = time.Since(began)
	}
	return resp, err
}

// newForwarder is the reverse proxy proper: the request goes to the upstream
// with its path and query untouched, identity headers set when the proxy
// vouches for the user, and every response streamed as it arrives.
//
// Long-running requests (watch, exec, follow, ...) are flushed after every
// write, so that watch events reach the client at once. Other requests are
// flushed when the response is complete (or whenever the server's write
// buffer fills), saving a flush per write; a response of unknown length or
// a text/event-stream is still flushed after every write, by
// httputil.ReverseProxy itself. Copy buffers come from a pool.
func (p *Proxy) newForwarder() http.Handler {
	upstream := p.cfg.Upstream
	identities := &identityCache{}
	rewrite := func(pr *httputil.ProxyRequest) {
		pr.SetURL(upstream)
		pr.Out.URL.Path, pr.Out.URL.RawPath = pr.In.URL.Path, pr.In.URL.RawPath
		if upstream.Path != "" && upstream.Path != "/" {
			pr.Out.URL.Path = singleJoin(upstream.Path, pr.In.URL.Path)
			pr.Out.URL.RawPath = ""
		}
		st, _ := pr.In.Context().Value(stateKey{}).(*reqState)
		if st != nil && st.forwardIdentity && st.user != nil {
			identities.set(pr.Out.Header, st.user)
		}
	}
	errorLog := slog.NewLogLogger(p.log.Handler(), slog.LevelDebug)
	newRP := func(flush time.Duration) *httputil.ReverseProxy {
		return &httputil.ReverseProxy{
			Rewrite:       rewrite,
			Transport:     timedTransport{p: p},
			FlushInterval: flush,
			BufferPool:    copyBuffers{},
			ErrorLog:      errorLog,
			ErrorHandler:  p.upstreamError,
		}
	}
	streaming, buffered := newRP(-1), newRP(0)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if st, ok := r.Context().Value(stateKey{}).(*reqState); ok && !st.longRunning && st.info != nil {
			buffered.ServeHTTP(w, r)
			return
		}
		streaming.ServeHTTP(w, r)
	})
}

// copyBufferSize is what httputil.ReverseProxy allocates per response
// without a pool.
const copyBufferSize = 32 << 10

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// copyBuffers lends httputil.ReverseProxy its response copy buffers.
type copyBuffers struct{}

func (copyBuffers) Get() []byte { return *copyBufferPool.Get().(*[]byte) }

func (copyBuffers) Put(b []byte) {
	if cap(b) == copyBufferSize {
		b = b[:copyBufferSize]
		copyBufferPool.Put(&b)
	}
}

func singleJoin(a, b string) string {
	switch {
	case len(a) > 0 && a[len(a)-1] == '/' && len(b) > 0 && b[0] == '/':
		return a + b[1:]
	case (len(a) == 0 || a[len(a)-1] != '/') && (len(b) == 0 || b[0] != '/'):
		return a + "/" + b
	}
	return a + b
}

// upstreamError answers a request the upstream could not take: 503 with a
// Status at once, never a hang (the client going away gets nothing). No
// Retry-After: client-go would wait and retry ten times, hiding an outage
// from the caller for ten seconds.
func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return
	}
	verb := verbUnknown
	if st, ok := r.Context().Value(stateKey{}).(*reqState); ok && st.info != nil {
		verb = boundedVerb(st.info.Verb)
	}
	p.metrics.upstream.WithLabelValues(verbs[verb]).Inc()
	p.log.Warn("upstream unreachable", "upstream", p.cfg.Upstream.Host, "method", r.Method, "path", r.URL.Path, "err", err)
	writeStatus(w, http.StatusServiceUnavailable, "ServiceUnavailable",
		"kubedefender: the API server behind this proxy is unreachable: "+err.Error(), 0)
}
