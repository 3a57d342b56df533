package serving

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/internal/logtest"
	"github.com/kubedefender/kubedefender/internal/testwait"
)

var ok = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })

// servedSerial handshakes with addr afresh and returns the serial of the
// certificate it serves.
func servedSerial(t *testing.T, addr string, roots *x509.CertPool) *big.Int {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

func TestServer(t *testing.T) {
	p := newServedPair(t, CertKeyConfig{Watch: Watch{Debounce: 10 * time.Millisecond, Interval: 50 * time.Millisecond}})
	certs := p.certs
	runInBackground(t, certs.Run)
	srv, err := New(Config{Name: "test", Addr: "127.0.0.1:0", Handler: ok,
		TLS: &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate}})
	if err != nil {
		t.Fatal(err)
	}
	runInBackground(t, srv.Run)
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)

	t.Run("a request over TLS is answered, over HTTP/1.1 although the client offers h2", func(t *testing.T) {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
			TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}}}
		resp, err := client.Get("https://" + srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 {
			t.Errorf("status %d over %s, want 200 over HTTP/1.1", resp.StatusCode, resp.Proto)
		}
	})
	t.Run("a port in use fails at construction", func(t *testing.T) {
		_, err := New(Config{Name: "test", Addr: srv.Addr().String(), Handler: ok})
		if err == nil || !strings.Contains(err.Error(), "failed to listen on") {
			t.Errorf("err = %v, want a listen failure", err)
		}
	})
	t.Run("a rotated pair is served on new connections", func(t *testing.T) {
		if got := servedSerial(t, srv.Addr().String(), roots); got.Cmp(p.first.Cert.SerialNumber) != 0 {
			t.Fatalf("served serial %v, want the first pair's", got)
		}
		second := writePair(t, p.dir, p.ca)
		testwait.Until(t, "a new connection sees the second pair", func() bool {
			return servedSerial(t, srv.Addr().String(), roots).Cmp(second.Cert.SerialNumber) == 0
		})
	})
}

func TestServerWithHTTP2(t *testing.T) {
	p := newServedPair(t, CertKeyConfig{})
	certs := p.certs
	srv, err := New(Config{Name: "test", Addr: "127.0.0.1:0", Handler: ok, EnableHTTP2: true,
		TLS: &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate, NextProtos: []string{"h2", "http/1.1"}}})
	if err != nil {
		t.Fatal(err)
	}
	runInBackground(t, srv.Run)
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Errorf("served over %s, want HTTP/2", resp.Proto)
	}
}

func TestServerShutdown(t *testing.T) {
	cases := []struct {
		name string
		// hold: a request in flight when the context ends, which never
		// finishes by itself.
		hold    bool
		wantErr string
	}{
		{name: "an idle server shuts down cleanly and frees its port"},
		{name: "a request still busy after the grace period is cut, logged, and the shutdown ends cleanly", hold: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			entered, release := make(chan struct{}), make(chan struct{})
			defer close(release)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(entered)
				<-release
			})
			after := make(chan struct{})
			logs := &logtest.Buffer{}
			srv, err := New(Config{Name: "test", Addr: "127.0.0.1:0", Handler: h, ShutdownTimeout: 50 * time.Millisecond,
				AfterShutdown: func() { close(after) }, Logger: slog.New(slog.NewTextHandler(logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Run(ctx) }()
			failed := make(chan error, 1)
			if tc.hold {
				go func() {
					resp, err := http.Get("http://" + srv.Addr().String())
					if err == nil {
						_ = resp.Body.Close()
					}
					failed <- err
				}()
				select {
				case <-entered:
				case err := <-failed:
					t.Fatalf("the request never reached the handler: %v", err)
				}
			}
			cancel()
			err = <-done
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr) {
				t.Errorf("Run = %v, want %q", err, tc.wantErr)
			}
			if cut := strings.Contains(logs.String(), "cut the connections still open"); cut != tc.hold {
				t.Errorf("logged a cut: %v, want %v; log:\n%s", cut, tc.hold, logs.String())
			}
			if tc.hold {
				if err := <-failed; err == nil {
					t.Error("the request held past the grace period was answered, want its connection cut")
				}
			}
			select {
			case <-after:
			default:
				t.Error("AfterShutdown was not called when Run returned")
			}
			if c, err := net.DialTimeout("tcp", srv.Addr().String(), time.Second); err == nil {
				_ = c.Close()
				t.Errorf("the port still accepts connections")
			}
		})
	}
}

func TestNewServerRequiresANameAndAHandler(t *testing.T) {
	if _, err := New(Config{Addr: "127.0.0.1:0", Handler: ok}); err == nil {
		t.Error("a server without a name was built")
	}
	if _, err := New(Config{Name: "test", Addr: "127.0.0.1:0"}); err == nil {
		t.Error("a server without a handler was built")
	}
}
