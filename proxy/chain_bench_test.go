package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"os"
	"strings"
	"testing"
)

// stubUpstream answers every round trip with a small canned response, so a
// benchmark measures the proxy's own work and none of the network's.
type stubUpstream struct{ body string }

func (s stubUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/2.0", ProtoMajor: 2,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(strings.NewReader(s.body)),
		ContentLength: int64(len(s.body)), Request: r,
	}, nil
}

// BenchmarkChain runs one GET through the proxy's handler chain in process,
// with the example policy, front-proxy authentication of a client
// certificate (cached after the first request, as on a keep-alive
// connection) and priority levels:
//
//   - filters: the filters only, with a no-op handler in place of the
//     reverse proxy;
//   - forward: the whole handler, reverse proxy included, with the upstream
//     transports answering from memory;
//   - bare: for comparison, an httputil.ReverseProxy alone (with a buffer
//     pool, as ours) over the same kind of transport.
//
// Its ns/op and allocs/op are the proxy's own per-request cost, without TLS,
// sockets or the upstream; BenchmarkProxyVersusBareReverseProxy measures the
// same end to end.
func BenchmarkChain(b *testing.B) {
	policyYAML, err := os.ReadFile("testdata/example-policy.yaml")
	if err != nil {
		b.Fatal(err)
	}
	body := `{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[]}`
	e := newEnv(b, envOptions{policy: string(policyYAML)})
	pair := e.userCert(b, "bench-user", "bench")
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		b.Fatal(err)
	}
	bareTransport := e.proxy.newTransport(e.proxy.upstreamTransport.TLSClientConfig.Clone())
	for _, t := range []*http.Transport{e.proxy.upstreamTransport, e.proxy.frontTransport, bareTransport} {
		t.RegisterProtocol("https", stubUpstream{body: body})
	}
	upstream := e.proxy.cfg.Upstream
	bare := &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(upstream) },
		Transport:  bareTransport,
		BufferPool: copyBuffers{},
	}
	noop := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	})
	for _, tc := range []struct {
		name    string
		handler http.Handler
	}{
		{name: "filters", handler: func() http.Handler {
			p := *e.proxy
			p.forward = noop
			return p.buildChain()
		}()},
		{name: "forward", handler: e.proxy.Handler()},
		{name: "bare", handler: bare},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodGet, "https://proxy.test/api/v1/namespaces/default/pods", nil)
			r.TLS = &tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{leaf}}
			r.Header.Set("User-Agent", "kubectl/v1.34.0")
			r.Header.Set("Accept", "application/json")
			w := &discardWriter{h: http.Header{}}
			tc.handler.ServeHTTP(w, r)
			if w.code != http.StatusOK {
				b.Fatalf("got %d", w.code)
			}
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				tc.handler.ServeHTTP(w, r)
			}
		})
	}
}

// discardWriter is a ResponseWriter that keeps only the status, reused
// between requests.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header { return w.h }

func (w *discardWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *discardWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(b), nil
}

func (w *discardWriter) Flush() {}

func (w *discardWriter) reset() {
	clear(w.h)
	w.code = 0
}
