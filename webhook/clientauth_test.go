package webhook

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/pki"
	"github.com/kubedefender/kubedefender/serving"
)

// clientAuthEnv is a webhook server over real TLS on a loopback port that
// requires client certificates from clientCA.
type clientAuthEnv struct {
	srv      *serving.Server
	auth     *ClientAuth
	ca       *serving.CA
	served   *pki.CA // signs the serving certificate
	clientCA *pki.CA
	caFile   string
	hits     atomic.Int32 // requests that reached the handler
	reg      *prometheus.Registry
}

func newClientAuthEnv(t *testing.T, allowed ...string) *clientAuthEnv {
	t.Helper()
	e := &clientAuthEnv{reg: prometheus.NewRegistry()}
	var err error
	if e.served, err = pki.NewCA(pki.CAOptions{CommonName: "serving-ca"}); err != nil {
		t.Fatal(err)
	}
	if e.clientCA, err = pki.NewCA(pki.CAOptions{CommonName: "apiserver-client-ca"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certs := servingPair(t, dir, e.served)
	e.caFile = filepath.Join(dir, "client-ca.crt")
	if err := os.WriteFile(e.caFile, e.clientCA.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if e.ca, err = serving.NewCA(serving.CAConfig{Purpose: "webhook client CA", File: e.caFile, Registerer: e.reg, MetricsSubsystem: "webhook"}); err != nil {
		t.Fatal(err)
	}
	if e.auth, err = NewClientAuth(ClientAuthConfig{CA: e.ca, AllowedNames: allowed, Registerer: e.reg}); err != nil {
		t.Fatal(err)
	}
	env := newTestEnv(t, Config{})
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { e.hits.Add(1); env.h.ServeHTTP(w, r) })
	if e.srv, err = NewServer(ServerConfig{Addr: "127.0.0.1:0", Handler: counted, Certificates: certs, ClientAuth: e.auth, ShutdownTimeout: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	runServer(t, e.srv)
	return e
}

// client returns an HTTPS client that trusts the serving CA and presents
// pair, if any (nil sends no certificate). Each call dials afresh.
func (e *clientAuthEnv) client(t *testing.T, pair *pki.Pair) *http.Client {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.served.CertPEM)
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if pair != nil {
		c, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
}

func (e *clientAuthEnv) post(t *testing.T, pair *pki.Pair) (*http.Response, error) {
	t.Helper()
	resp, err := e.client(t, pair).Post("https://"+e.srv.Addr().String()+Path, "application/json", strings.NewReader(pods("DELETE", "a", "p1").json()))
	if err == nil {
		_ = resp.Body.Close()
	}
	return resp, err
}

func issueClient(t *testing.T, ca *pki.CA, cn string) *pki.Pair {
	t.Helper()
	p, err := ca.IssueClient(pki.ClientOptions{CommonName: cn})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestClientAuthRefusesCallersWithoutAnAcceptedCertificate(t *testing.T) {
	e := newClientAuthEnv(t, "kube-apiserver")
	otherCA, err := pki.NewCA(pki.CAOptions{CommonName: "attacker-ca"})
	if err != nil {
		t.Fatal(err)
	}
	// A serving certificate from the right CA is valid only for server auth.
	serving, err := e.clientCA.Issue(pki.ServingOptions{CommonName: "kube-apiserver", DNSNames: []string{"kube-apiserver"}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name       string
		pair       *pki.Pair
		wantReason string // "" : answered with 200
	}{
		{name: "a caller without a certificate never reaches the handler", pair: nil, wantReason: RejectNoCertificate},
		{name: "a certificate from another CA never reaches the handler", pair: issueClient(t, otherCA, "kube-apiserver"), wantReason: RejectUntrusted},
		{name: "a serving certificate from the client CA is not a client certificate", pair: serving, wantReason: RejectUntrusted},
		{name: "a common name outside the allowed names never reaches the handler", pair: issueClient(t, e.clientCA, "system:node:n1"), wantReason: RejectNameNotAllowed},
		{name: "the API server's certificate is answered", pair: issueClient(t, e.clientCA, "kube-apiserver")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hits := e.hits.Load()
			before := testutil.ToFloat64(e.auth.rejected.WithLabelValues(tc.wantReason))
			resp, err := e.post(t, tc.pair)
			if tc.wantReason == "" {
				if err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("got %v %v, want 200", resp, err)
				}
				if e.hits.Load() != hits+1 {
					t.Errorf("the handler saw %d requests, want 1", e.hits.Load()-hits)
				}
				return
			}
			if err == nil {
				t.Fatalf("got HTTP %d, want the TLS handshake to fail", resp.StatusCode)
			}
			if !strings.Contains(err.Error(), "tls") && !strings.Contains(err.Error(), "connection reset") && !strings.Contains(err.Error(), "EOF") {
				t.Errorf("err = %v, want a TLS failure", err)
			}
			if got := e.hits.Load() - hits; got != 0 {
				t.Errorf("the handler saw %d requests, want none", got)
			}
			if got := testutil.ToFloat64(e.auth.rejected.WithLabelValues(tc.wantReason)) - before; got != 1 {
				t.Errorf("client_certificate_rejections_total{reason=%s} rose by %v, want 1", tc.wantReason, got)
			}
		})
	}
}

func TestClientAuthWithoutAllowedNamesAcceptsAnyNameFromTheCA(t *testing.T) {
	e := newClientAuthEnv(t)
	if resp, err := e.post(t, issueClient(t, e.clientCA, "anything")); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("got %v %v, want 200", resp, err)
	}
}

func TestClientAuthReloadsItsCA(t *testing.T) {
	e := newClientAuthEnv(t)
	oldClient := issueClient(t, e.clientCA, "kube-apiserver")
	next, err := pki.NewCA(pki.CAOptions{CommonName: "next-ca"})
	if err != nil {
		t.Fatal(err)
	}
	newClient := issueClient(t, next, "kube-apiserver")

	// Given the CA file is replaced by a new CA
	if err := os.WriteFile(e.caFile, next.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.ca.Reload(); err != nil {
		t.Fatal(err)
	}
	// Then the new CA's certificates are accepted and the old CA's refused
	if resp, err := e.post(t, newClient); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the new CA's client: %v %v, want 200", resp, err)
	}
	if _, err := e.post(t, oldClient); err == nil {
		t.Fatal("the old CA's client was answered after the CA was replaced")
	}

	// When a bad edit lands in the file
	if err := os.WriteFile(e.caFile, []byte("-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.ca.Reload(); err == nil {
		t.Fatal("a broken CA file was accepted")
	}
	// Then the running CA stays, and both reloads are counted
	if resp, err := e.post(t, newClient); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after a bad edit: %v %v, want 200 with the running CA", resp, err)
	}
	want := `# HELP kubedefender_webhook_client_ca_reloads_total Client CA reloads by result: success (a new bundle verifies callers) or failure (the running bundle stays).
# TYPE kubedefender_webhook_client_ca_reloads_total counter
kubedefender_webhook_client_ca_reloads_total{result="failure"} 1
kubedefender_webhook_client_ca_reloads_total{result="success"} 1
`
	if err := testutil.GatherAndCompare(e.reg, strings.NewReader(want), "kubedefender_webhook_client_ca_reloads_total"); err != nil {
		t.Error(err)
	}
}

func TestClientAuthVerifiesResumedSessionsAgainstTheCurrentCA(t *testing.T) {
	e := newClientAuthEnv(t)
	pair := issueClient(t, e.clientCA, "kube-apiserver")
	c, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.served.CertPEM)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{
		RootCAs: roots, MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{c}, ClientSessionCache: tls.NewLRUClientSessionCache(4)}}}
	post := func() (*http.Response, error) {
		resp, err := client.Post("https://"+e.srv.Addr().String()+Path, "application/json", strings.NewReader(pods("DELETE", "a", "p1").json()))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
		return resp, err
	}
	// Given a client whose second connection resumes the first one's TLS session
	if _, err := post(); err != nil {
		t.Fatal(err)
	}
	resp, err := post()
	if err != nil || !resp.TLS.DidResume {
		t.Fatalf("second connection: %v, resumed %v; want a resumed session", err, err == nil && resp.TLS.DidResume)
	}
	// When the client CA is replaced
	next, err := pki.NewCA(pki.CAOptions{CommonName: "next-ca"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.caFile, next.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.ca.Reload(); err != nil {
		t.Fatal(err)
	}
	// Then a resumed session of a certificate from the old CA is refused too
	hits := e.hits.Load()
	if resp, err := post(); err == nil {
		t.Fatalf("a session resumed after the CA changed was answered: %s (resumed %v)", resp.Status, resp.TLS.DidResume)
	}
	if e.hits.Load() != hits {
		t.Error("the refused request reached the handler")
	}
}

func TestClientAuthVerifiesAtTheClocksTime(t *testing.T) {
	ca, err := pki.NewCA(pki.CAOptions{CommonName: "apiserver-client-ca"})
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	bundle, err := serving.NewCA(serving.CAConfig{Purpose: "webhook client CA", File: caFile})
	if err != nil {
		t.Fatal(err)
	}
	client := issueClient(t, ca, "kube-apiserver")
	cases := []struct {
		name       string
		now        time.Time
		wantReason string
	}{
		{name: "a certificate is accepted while it is valid", now: client.Cert.NotBefore.Add(time.Hour)},
		{name: "a certificate is refused once it has expired", now: client.Cert.NotAfter.Add(time.Second), wantReason: RejectUntrusted},
		{name: "a certificate is refused before it is valid", now: client.Cert.NotBefore.Add(-time.Second), wantReason: RejectUntrusted},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			auth, err := NewClientAuth(ClientAuthConfig{CA: bundle, Clock: clocktesting.NewFakePassiveClock(tc.now)})
			if err != nil {
				t.Fatal(err)
			}
			err = auth.verifyConnection(tls.ConnectionState{PeerCertificates: []*x509.Certificate{client.Cert}})
			if got := testutil.ToFloat64(auth.rejected.WithLabelValues(RejectUntrusted)); (err != nil) != (tc.wantReason != "") || (tc.wantReason != "") != (got == 1) {
				t.Errorf("verifyConnection = %v, untrusted rejections %v; want reason %q", err, got, tc.wantReason)
			}
		})
	}
}
