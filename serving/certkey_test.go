package serving

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kubedefender/kubedefender/internal/testwait"
	"github.com/kubedefender/kubedefender/pki"
)

func TestCertKeyPicksUpRotation(t *testing.T) {
	reg := prometheus.NewRegistry()
	// A short resync: a rotation made before the watch started is still
	// picked up, so the test waits on the result and never on the watch.
	p := newServedPair(t, CertKeyConfig{Registerer: reg, MetricsSubsystem: "webhook", Watch: Watch{Debounce: 10 * time.Millisecond, Interval: 50 * time.Millisecond}})
	c := p.certs
	if c.Leaf().SerialNumber.Cmp(p.first.Cert.SerialNumber) != 0 {
		t.Fatalf("serving serial %v, want the first pair's", c.Leaf().SerialNumber)
	}
	runInBackground(t, c.Run)

	t.Run("a rotated pair is served without a restart", func(t *testing.T) {
		second := writePair(t, p.dir, p.ca)
		testwait.Until(t, "the second pair is served", func() bool { return c.Leaf().SerialNumber.Cmp(second.Cert.SerialNumber) == 0 })
		if got := testutil.ToFloat64(c.reloads.WithLabelValues(ReloadSuccess)); got < 1 {
			t.Errorf("reloads{success} = %v, want at least 1", got)
		}
		served, _ := c.GetCertificate(nil)
		presented, _ := c.GetClientCertificate(nil)
		if served.Leaf.SerialNumber.Cmp(second.Cert.SerialNumber) != 0 || presented != served {
			t.Errorf("GetCertificate and GetClientCertificate do not both return the second pair")
		}
	})
	t.Run("a broken pair is refused and the running one stays", func(t *testing.T) {
		running := c.Leaf().SerialNumber
		if err := os.WriteFile(p.keyFile, []byte("not a key"), 0o600); err != nil {
			t.Fatal(err)
		}
		testwait.Until(t, "a reload has failed", func() bool { return testutil.ToFloat64(c.reloads.WithLabelValues(ReloadFailure)) >= 1 })
		if c.Leaf().SerialNumber.Cmp(running) != 0 {
			t.Errorf("serving serial changed to %v after a broken write", c.Leaf().SerialNumber)
		}
		if err := c.Reload(); err == nil {
			t.Errorf("Reload of a broken pair returned nil")
		}
	})
	t.Run("the reload counter is registered under the subsystem given", func(t *testing.T) {
		if n, err := testutil.GatherAndCount(reg, "kubedefender_webhook_certificate_reloads_total"); err != nil || n != 2 {
			t.Errorf("kubedefender_webhook_certificate_reloads_total: %d series (%v), want 2", n, err)
		}
	})
}

func TestCertKeyCountsOnlyChanges(t *testing.T) {
	p := newServedPair(t, CertKeyConfig{})
	c := p.certs
	// Given files that did not change, a reload is a no-op
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(c.reloads.WithLabelValues(ReloadSuccess)); got != 0 {
		t.Errorf("reloads{success} = %v after a reload of unchanged files, want 0", got)
	}
	// When a pair is rotated, one reload counts one success
	second := writePair(t, p.dir, p.ca)
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(c.reloads.WithLabelValues(ReloadSuccess)); got != 1 || c.Leaf().SerialNumber.Cmp(second.Cert.SerialNumber) != 0 {
		t.Errorf("reloads{success} = %v serving %v, want 1 and the second pair", got, c.Leaf().SerialNumber)
	}
}

func TestNewCertKeyRefusesAnUnusablePair(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, "serving-ca")
	other := t.TempDir()
	writePair(t, other, ca)
	mismatched := filepath.Join(dir, "mismatched.key")
	writePair(t, dir, ca)
	if err := os.Rename(filepath.Join(dir, pki.KeyFile), mismatched); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name       string
		cert, key  string
		wantSubstr string
	}{
		{name: "missing files", cert: filepath.Join(dir, "none.crt"), key: filepath.Join(dir, "none.key"), wantSubstr: "no such file"},
		{name: "no file names", wantSubstr: "both a certificate and a key file are required"},
		{name: "a key of another certificate", cert: filepath.Join(other, pki.CertFile), key: mismatched, wantSubstr: "private key does not match"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewCertKey(CertKeyConfig{Purpose: "serving", CertFile: tc.cert, KeyFile: tc.key})
			if err == nil || !strings.Contains(err.Error(), tc.wantSubstr) || !strings.Contains(err.Error(), "failed to load the serving pair") {
				t.Errorf("err = %v, want %q", err, tc.wantSubstr)
			}
		})
	}
}
