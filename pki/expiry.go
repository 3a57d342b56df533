package pki

import (
	"crypto/tls"
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

// Leaf returns the leaf certificate of a pair, parsing it when the pair was
// built without one; nil for an empty or unparsable pair.
func Leaf(pair *tls.Certificate) *x509.Certificate {
	if pair == nil || len(pair.Certificate) == 0 {
		return nil
	}
	if pair.Leaf != nil {
		return pair.Leaf
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil
	}
	return c
}
