package proxy

import (
	"testing"
)

// TestProxyReportsItsCertificateExpiry checks that a proxy with a serving
// pair exposes kubedefender_certificate_expiry_timestamp_seconds{listener="proxy"}
// with the notAfter of the certificate it serves.
func TestProxyReportsItsCertificateExpiry(t *testing.T) {
	e := newEnv(t, envOptions{})
	mfs, err := e.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := float64(e.proxy.cfg.Serving.Leaf().NotAfter.Unix())
	for _, mf := range mfs {
		if mf.GetName() != "kubedefender_certificate_expiry_timestamp_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == "proxy" {
				if got := m.GetGauge().GetValue(); got != want || got == 0 {
					t.Errorf("expiry = %v, want the served certificate's notAfter %v", got, want)
				}
				return
			}
		}
	}
	t.Errorf("no kubedefender_certificate_expiry_timestamp_seconds{listener=\"proxy\"} among %d families", len(mfs))
}
