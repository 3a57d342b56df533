package webhook

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/pki"
	"github.com/kubedefender/kubedefender/serving"
)

func writePair(t testing.TB, dir string, ca *pki.CA) *pki.Pair {
	t.Helper()
	pair, err := ca.Issue(pki.ServingOptions{IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFiles(dir, ca, pair, false); err != nil {
		t.Fatal(err)
	}
	return pair
}

// servingPair writes a serving pair for 127.0.0.1 from ca into dir and loads
// it.
func servingPair(t testing.TB, dir string, ca *pki.CA) *serving.CertKey {
	t.Helper()
	writePair(t, dir, ca)
	certs, err := serving.NewCertKey(serving.CertKeyConfig{Purpose: "serving", CertFile: filepath.Join(dir, pki.CertFile), KeyFile: filepath.Join(dir, pki.KeyFile)})
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func TestServer(t *testing.T) {
	ca, err := pki.NewCA(pki.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	certs := servingPair(t, t.TempDir(), ca)
	env := newTestEnv(t, Config{})
	srv, err := NewServer(ServerConfig{Addr: "127.0.0.1:0", Handler: env.h, Certificates: certs, ShutdownTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}, ForceAttemptHTTP2: true}}

	t.Run("a review over TLS is answered, over HTTP/1.1 although the client offers h2", func(t *testing.T) {
		resp, err := client.Post("https://"+srv.Addr().String()+Path, "application/json", strings.NewReader(pods("DELETE", "a", "p1").json()))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 {
			t.Errorf("status %d over %s, want 200 over HTTP/1.1", resp.StatusCode, resp.Proto)
		}
	})
	t.Run("a port in use fails at construction", func(t *testing.T) {
		_, err := NewServer(ServerConfig{Addr: srv.Addr().String(), Handler: env.h, Certificates: certs})
		if err == nil || !strings.Contains(err.Error(), "failed to listen on") {
			t.Errorf("err = %v, want a listen failure", err)
		}
	})
	t.Run("cancelling the context shuts it down cleanly and frees the port", func(t *testing.T) {
		client.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
		if c, err := net.DialTimeout("tcp", srv.Addr().String(), time.Second); err == nil {
			_ = c.Close()
			t.Errorf("the port still accepts connections")
		}
	})
}

// runServer runs srv until the test ends; Run must then return nil.
func runServer(t testing.TB, srv *serving.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
	})
}
