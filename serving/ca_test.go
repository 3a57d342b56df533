package serving

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kubedefender/kubedefender/internal/errtest"
	"github.com/kubedefender/kubedefender/pki"
)

func TestParseCABundle(t *testing.T) {
	ca := newCA(t, "ca")
	cases := []struct {
		name    string
		data    string
		wantErr []string
	}{
		{name: "one certificate parses", data: string(ca.CertPEM)},
		{name: "an empty file holds no certificate", data: "", wantErr: []string{"holds no PEM certificate"}},
		{name: "a key is not a CA", data: string(ca.KeyPEM), wantErr: []string{`want CERTIFICATE`}},
		{name: "text after the certificates is refused", data: string(ca.CertPEM) + "garbage", wantErr: []string{"not PEM"}},
		{name: "a corrupt certificate is refused", data: "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n", wantErr: []string{"certificate 1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCABundle([]byte(tc.data))
			errtest.Want(t, err, tc.wantErr...)
		})
	}
}

// verifies reports whether roots verify a client certificate of ca.
func verifies(t *testing.T, roots *x509.CertPool, ca *pki.CA) bool {
	t.Helper()
	p, err := ca.IssueClient(pki.ClientOptions{CommonName: "someone"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

func TestCAReloads(t *testing.T) {
	first, next := newCA(t, "first"), newCA(t, "next")
	file := filepath.Join(t.TempDir(), "ca.crt")
	write := func(data []byte) {
		t.Helper()
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(first.CertPEM)
	reg := prometheus.NewRegistry()
	c, err := NewCA(CAConfig{Purpose: "client CA", File: file, Registerer: reg, MetricsSubsystem: "webhook"})
	if err != nil {
		t.Fatal(err)
	}
	if !verifies(t, c.Roots(), first) {
		t.Fatal("the first CA's client is not verified")
	}
	cases := []struct {
		name        string
		data        []byte
		wantErr     bool
		wantTrusted *pki.CA
		wantRefused *pki.CA
	}{
		{name: "an unchanged file is a no-op", data: first.CertPEM, wantTrusted: first},
		{name: "a new CA replaces the old one", data: next.CertPEM, wantTrusted: next, wantRefused: first},
		{name: "a corrupt certificate is refused and the running CA stays", data: []byte("-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n"),
			wantErr: true, wantTrusted: next},
		{name: "a CA followed by a key is refused whole (dynamiccertificates alone would take the CA)", data: append(append([]byte{}, first.CertPEM...), first.KeyPEM...),
			wantErr: true, wantTrusted: next, wantRefused: first},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			write(tc.data)
			if err := c.Reload(); (err != nil) != tc.wantErr {
				t.Fatalf("Reload = %v, want error %v", err, tc.wantErr)
			}
			if !verifies(t, c.Roots(), tc.wantTrusted) {
				t.Errorf("%s is not trusted", tc.wantTrusted.Cert.Subject.CommonName)
			}
			if tc.wantRefused != nil && verifies(t, c.Roots(), tc.wantRefused) {
				t.Errorf("%s is still trusted", tc.wantRefused.Cert.Subject.CommonName)
			}
		})
	}
	for result, want := range map[string]float64{ReloadSuccess: 1, ReloadFailure: 2} {
		if got := testutil.ToFloat64(c.reloads.WithLabelValues(result)); got != want {
			t.Errorf("client_ca_reloads_total{result=%s} = %v, want %v", result, got, want)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "kubedefender_webhook_client_ca_reloads_total"); err != nil || n != 2 {
		t.Errorf("kubedefender_webhook_client_ca_reloads_total: %d series (%v), want 2", n, err)
	}
}
