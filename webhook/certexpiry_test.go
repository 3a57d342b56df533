package webhook

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kubedefender/kubedefender/pki"
	"github.com/kubedefender/kubedefender/serving"
)

// TestCertificateExpiryMetricFollowsTheServedPair checks that
// kubedefender_certificate_expiry_timestamp_seconds{listener="webhook"} is the
// notAfter of the pair being served, before and after a rotation.
func TestCertificateExpiryMetricFollowsTheServedPair(t *testing.T) {
	ca, err := pki.NewCA(pki.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	issue := func(validity time.Duration) *pki.Pair {
		pair, err := ca.Issue(pki.ServingOptions{IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Validity: validity})
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteFiles(dir, ca, pair, false); err != nil {
			t.Fatal(err)
		}
		return pair
	}
	first := issue(48 * time.Hour)
	reg := prometheus.NewRegistry()
	c, err := serving.NewCertKey(serving.CertKeyConfig{Purpose: "serving", CertFile: filepath.Join(dir, pki.CertFile), KeyFile: filepath.Join(dir, pki.KeyFile)})
	if err != nil {
		t.Fatal(err)
	}
	env := newTestEnv(t, Config{})
	srv, err := NewServer(ServerConfig{Addr: "127.0.0.1:0", Handler: env.h, Certificates: c, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, srv)
	want := func(p *pki.Pair) string {
		return `# HELP kubedefender_certificate_expiry_timestamp_seconds When the serving certificate of a listener expires (its notAfter, Unix seconds).
# TYPE kubedefender_certificate_expiry_timestamp_seconds gauge
kubedefender_certificate_expiry_timestamp_seconds{listener="webhook"} ` + strconv.FormatInt(p.Cert.NotAfter.Unix(), 10) + "\n"
	}
	t.Run("it is the first pair's notAfter", func(t *testing.T) {
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want(first)), "kubedefender_certificate_expiry_timestamp_seconds"); err != nil {
			t.Error(err)
		}
	})
	t.Run("after a rotation it is the new pair's", func(t *testing.T) {
		second := issue(96 * time.Hour)
		if err := c.Reload(); err != nil {
			t.Fatal(err)
		}
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want(second)), "kubedefender_certificate_expiry_timestamp_seconds"); err != nil {
			t.Error(err)
		}
	})
}
