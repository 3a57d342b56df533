package redistest

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/pki"
)

// TLSFiles are PEM files for a TLS redis-server: a CA and a server pair
// for 127.0.0.1 signed by it.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
}

// GenerateTLS writes a fresh CA and a server certificate for 127.0.0.1 into
// a temporary directory.
func GenerateTLS(t testing.TB) TLSFiles {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA(pki.CAOptions{CommonName: "redistest CA", Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue(pki.ServingOptions{DNSNames: []string{"localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	f := TLSFiles{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	if err := os.WriteFile(f.CAFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := pair.Write(f.CertFile, f.KeyFile); err != nil {
		t.Fatal(err)
	}
	return f
}

// clientTLS is a client configuration trusting f's CA.
func (f *TLSFiles) clientTLS() (*tls.Config, error) {
	pemBytes, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
