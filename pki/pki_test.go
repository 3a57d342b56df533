package pki

import (
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIssuedCertificatesVerify(t *testing.T) {
	ca, err := NewCA(CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue(ServingOptions{DNSNames: []string{"kubedefender.kubedefender-system.svc"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cases := []struct {
		name    string
		host    string
		wantErr bool
	}{
		{name: "the DNS name verifies", host: "kubedefender.kubedefender-system.svc"},
		{name: "the IP verifies", host: "127.0.0.1"},
		{name: "another name does not", host: "evil.example.com", wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pair.Cert.Verify(x509.VerifyOptions{DNSName: tc.host, Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if (err != nil) != tc.wantErr {
				t.Errorf("verify %s: err = %v, wantErr %v", tc.host, err, tc.wantErr)
			}
		})
	}
	if pair.Cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Errorf("serving certificate outlives its CA")
	}
}

func TestWriteFilesAndLoadCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	ca, err := NewCA(CAOptions{Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue(ServingOptions{IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFiles(dir, ca, pair, true); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{CACertFile: 0o644, CertFile: 0o644, KeyFile: 0o600, CAKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v mode %v, want %v", name, err, fi.Mode().Perm(), mode)
		}
	}
	loaded, err := LoadCA(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatalf("failed to load the written CA: %v", err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Errorf("loaded a different CA")
	}
	t.Run("a key that does not match the CA is refused", func(t *testing.T) {
		other, _ := NewCA(CAOptions{})
		bad := filepath.Join(t.TempDir(), "bad.key")
		_ = os.WriteFile(bad, other.KeyPEM, 0o600)
		if _, err := LoadCA(filepath.Join(dir, CACertFile), bad); err == nil || !strings.Contains(err.Error(), "does not match") {
			t.Errorf("err = %v, want a mismatch", err)
		}
	})
	t.Run("a serving certificate is not a CA", func(t *testing.T) {
		if _, err := LoadCA(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)); err == nil || !strings.Contains(err.Error(), "is not a CA") {
			t.Errorf("err = %v, want not a CA", err)
		}
	})
	t.Run("a pair needs a name", func(t *testing.T) {
		if _, err := ca.Issue(ServingOptions{}); err == nil {
			t.Errorf("issued a certificate without names")
		}
	})
}

func TestClientCertificatesCarryTheUserAndGroups(t *testing.T) {
	ca, err := NewCA(CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.IssueClient(ClientOptions{CommonName: "alice", Groups: []string{"system:masters", "dev"}})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := pair.Cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("a client certificate does not verify for client auth: %v", err)
	}
	if _, err := pair.Cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client certificate verifies for server auth")
	}
	orgs := slices.Sorted(slices.Values(pair.Cert.Subject.Organization))
	if pair.Cert.Subject.CommonName != "alice" || !slices.Equal(orgs, []string{"dev", "system:masters"}) {
		t.Errorf("subject %v, want CN=alice O=system:masters,dev", pair.Cert.Subject)
	}
	if _, err := ca.IssueClient(ClientOptions{}); err == nil {
		t.Error("a client certificate without a user was issued")
	}
}

func TestIssueRefusesWhatIsNotADNSName(t *testing.T) {
	ca, err := NewCA(CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"UPPER.svc", "a_b.svc", "a..b", "*", "-x.svc", strings.Repeat("a", 64) + ".svc"} {
		if _, err := ca.Issue(ServingOptions{DNSNames: []string{name}}); err == nil || !strings.Contains(err.Error(), "not a DNS name") {
			t.Errorf("Issue(%q) = %v, want a refusal that says it is not a DNS name", name, err)
		}
	}
	for _, name := range []string{"localhost", "kubedefender.kubedefender-system.svc", "*.example.com"} {
		if _, err := ca.Issue(ServingOptions{DNSNames: []string{name}}); err != nil {
			t.Errorf("Issue(%q): %v", name, err)
		}
	}
}
