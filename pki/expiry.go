package pki

import (
	"crypto/x509"

	"github.com/prometheus/client_golang/prometheus"
)

// ExpiryGauge returns kubedefender_certificate_expiry_timestamp_seconds for
// one listener ("webhook", "proxy"): the notAfter of the certificate that
// leaf returns, read at every scrape, so a rotated pair shows at once. Every
// listener registers its own on the same registry (the descriptors differ
// only in the listener label's value). leaf returning nil reports 0.
func ExpiryGauge(listener string, leaf func() *x509.Certificate) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "kubedefender", Name: "certificate_expiry_timestamp_seconds",
		Help:        "When the serving certificate of a listener expires (its notAfter, Unix seconds).",
		ConstLabels: prometheus.Labels{"listener": listener},
	}, func() float64 {
		c := leaf()
		if c == nil {
			return 0
		}
		return float64(c.NotAfter.Unix())
	})
}
