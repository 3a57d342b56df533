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
)

func TestServer(t *testing.T) {
	ca, err := pki.NewCA(pki.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writePair(t, dir, ca)
	certs, err := NewCertReloader(CertConfig{CertFile: filepath.Join(dir, pki.CertFile), KeyFile: filepath.Join(dir, pki.KeyFile)})
	if err != nil {
		t.Fatal(err)
	}
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
		resp, err := client.Post(srv.URL(), "application/json", strings.NewReader(pods("DELETE", "a", "p1").json()))
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
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return within 5s")
		}
		if c, err := net.DialTimeout("tcp", srv.Addr().String(), time.Second); err == nil {
			_ = c.Close()
			t.Errorf("the port still accepts connections")
		}
	})
}
