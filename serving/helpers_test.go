package serving

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/kubedefender/kubedefender/pki"
)

// writePair issues a serving pair for 127.0.0.1 from ca and writes it (and
// the CA) into dir, replacing what was there.
func writePair(t *testing.T, dir string, ca *pki.CA) *pki.Pair {
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

// servedPair is a pair that a new CA issued into a new directory, loaded as
// a CertKey; writePair(t, dir, ca) rotates it.
type servedPair struct {
	ca           *pki.CA
	dir, keyFile string
	first        *pki.Pair
	certs        *CertKey
}

// newServedPair issues the pair and loads it with NewCertKey(cfg), cfg's
// Purpose ("serving") and files filled in.
func newServedPair(t *testing.T, cfg CertKeyConfig) *servedPair {
	t.Helper()
	p := &servedPair{ca: newCA(t, "serving-ca"), dir: t.TempDir()}
	p.first = writePair(t, p.dir, p.ca)
	certFile, keyFile := certFiles(p.dir)
	p.keyFile = keyFile
	cfg.Purpose, cfg.CertFile, cfg.KeyFile = "serving", certFile, keyFile
	certs, err := NewCertKey(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.certs = certs
	return p
}

func newCA(t *testing.T, cn string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(pki.CAOptions{CommonName: cn})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func certFiles(dir string) (string, string) {
	return filepath.Join(dir, pki.CertFile), filepath.Join(dir, pki.KeyFile)
}

// runInBackground runs run until the test ends, and fails the test when it
// returns an error.
func runInBackground(t *testing.T, run func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run returned %v", err)
		}
	})
}
