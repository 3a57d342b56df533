package webhook

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kubedefender/kubedefender/pki"
)

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

func TestCertReloaderPicksUpRotation(t *testing.T) {
	ca, err := pki.NewCA(pki.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	first := writePair(t, dir, ca)
	reg := prometheus.NewRegistry()
	c, err := NewCertReloader(CertConfig{CertFile: filepath.Join(dir, pki.CertFile), KeyFile: filepath.Join(dir, pki.KeyFile),
		Registerer: reg, Debounce: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if c.Current().SerialNumber.Cmp(first.Cert.SerialNumber) != 0 {
		t.Fatalf("serving serial %v, want the first pair's", c.Current().SerialNumber)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(50 * time.Millisecond) // let the watch start

	t.Run("a rotated pair is served without a restart", func(t *testing.T) {
		second := writePair(t, dir, ca)
		waitFor(t, func() bool { return c.Current().SerialNumber.Cmp(second.Cert.SerialNumber) == 0 })
		if got := testutil.ToFloat64(c.reloads.WithLabelValues("success")); got < 1 {
			t.Errorf("reloads{success} = %v, want at least 1", got)
		}
	})
	t.Run("a broken pair is refused and the running one stays", func(t *testing.T) {
		running := c.Current().SerialNumber
		if err := os.WriteFile(filepath.Join(dir, pki.KeyFile), []byte("not a key"), 0o600); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return testutil.ToFloat64(c.reloads.WithLabelValues("failure")) >= 1 })
		if c.Current().SerialNumber.Cmp(running) != 0 {
			t.Errorf("serving serial changed to %v after a broken write", c.Current().SerialNumber)
		}
		if err := c.Reload(); err == nil {
			t.Errorf("Reload of a broken pair returned nil")
		}
	})
}

func TestNewCertReloaderRefusesAnUnusablePair(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name       string
		cert, key  string
		wantSubstr string
	}{
		{name: "missing files", cert: filepath.Join(dir, "none.crt"), key: filepath.Join(dir, "none.key"), wantSubstr: "failed to read serving certificate"},
		{name: "no file names", wantSubstr: "both a certificate and a key file are required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewCertReloader(CertConfig{CertFile: tc.cert, KeyFile: tc.key}); err == nil || !strings.Contains(err.Error(), tc.wantSubstr) {
				t.Errorf("err = %v, want %q", err, tc.wantSubstr)
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
