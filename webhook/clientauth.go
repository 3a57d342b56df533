package webhook

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/kubedefender/kubedefender/serving"
)

// ClientAuthConfig configures a ClientAuth.
type ClientAuthConfig struct {
	// CA is the bundle of CAs whose client certificates may call the
	// webhook (the CA of the API server's client certificate); required.
	// Its owner runs its reload loop (serving.CA.Run).
	CA *serving.CA
	// AllowedNames, when not empty, are the only common names accepted in
	// a client certificate, as kube-apiserver's --requestheader-allowed-names.
	AllowedNames []string
	// Clock tells the time certificates are verified at; nil is real time.
	Clock clock.PassiveClock
	// Registerer takes
	// kubedefender_webhook_client_certificate_rejections_total; nil
	// registers nothing.
	Registerer prometheus.Registerer
}

// Reasons of kubedefender_webhook_client_certificate_rejections_total.
const (
	RejectNoCertificate  = "no_certificate"
	RejectUntrusted      = "untrusted"
	RejectNameNotAllowed = "name_not_allowed"
)

// ClientAuth authenticates the webhook's callers by client certificate: the
// TLS handshake of a caller without a certificate signed by the CA bundle
// (or whose common name is not in AllowedNames) fails, so its request never
// reaches the handler. The bundle is the CA's current one: a reloaded file
// applies to the next handshake.
//
// The checks are crypto/tls's for tls.RequireAndVerifyClientCert (a chain to
// the bundle, valid now, with the client-auth key usage) made in
// tls.Config.VerifyConnection rather than by crypto/tls itself, for two
// reasons: each refusal is counted by reason, and a resumed TLS session is
// verified again against the current bundle, so a CA removed from the file
// stops being accepted on new handshakes, resumed or not. Connections
// already established stay open until they close, as with kube-apiserver's
// own client CA.
type ClientAuth struct {
	ca       *serving.CA
	clock    clock.PassiveClock
	allowed  map[string]bool
	rejected *prometheus.CounterVec
}

// NewClientAuth builds a ClientAuth on cfg.CA.
func NewClientAuth(cfg ClientAuthConfig) (*ClientAuth, error) {
	if cfg.CA == nil {
		return nil, errors.New("failed to build the webhook's client authentication: a client CA is required")
	}
	c := &ClientAuth{ca: cfg.CA, clock: cfg.Clock}
	if c.clock == nil {
		c.clock = clock.RealClock{}
	}
	if len(cfg.AllowedNames) > 0 {
		c.allowed = make(map[string]bool, len(cfg.AllowedNames))
		for _, n := range cfg.AllowedNames {
			c.allowed[n] = true
		}
	}
	c.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kubedefender", Subsystem: "webhook", Name: "client_certificate_rejections_total",
		Help: "TLS handshakes the webhook refused by reason: no_certificate, untrusted (not signed by the client CA, expired, or not for client auth) or name_not_allowed.",
	}, []string{"reason"})
	for _, r := range []string{RejectNoCertificate, RejectUntrusted, RejectNameNotAllowed} {
		c.rejected.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(c.rejected); err != nil {
			return nil, fmt.Errorf("failed to register client authentication metrics: %w", err)
		}
	}
	return c, nil
}

// configure makes cfg ask every caller for a client certificate and refuse
// the handshake of any caller ClientAuth does not accept.
func (c *ClientAuth) configure(cfg *tls.Config) {
	// Requested, not required, by crypto/tls: verifyConnection requires it,
	// so that a missing certificate is counted like any other refusal.
	cfg.ClientAuth = tls.RequestClientCert
	cfg.VerifyConnection = c.verifyConnection
}

// verifyConnection is tls.Config.VerifyConnection: it runs at the end of every
// handshake, resumptions included, after crypto/tls has checked that the
// client holds the key of the certificate it sent.
func (c *ClientAuth) verifyConnection(cs tls.ConnectionState) error {
	reason, err := c.verify(cs.PeerCertificates, c.clock.Now())
	if err != nil {
		c.rejected.WithLabelValues(reason).Inc()
		return err
	}
	return nil
}

// verify checks a client's certificate chain (leaf first) at now. It returns
// the rejection reason with the error.
func (c *ClientAuth) verify(chain []*x509.Certificate, now time.Time) (reason string, err error) {
	if len(chain) == 0 {
		return RejectNoCertificate, errors.New("kubedefender webhook: a client certificate is required and none was sent")
	}
	leaf := chain[0]
	opts := x509.VerifyOptions{
		Roots:         c.ca.Roots(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, ic := range chain[1:] {
		opts.Intermediates.AddCert(ic)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return RejectUntrusted, fmt.Errorf("kubedefender webhook: client certificate %q refused: %w", leaf.Subject.CommonName, err)
	}
	if c.allowed != nil && !c.allowed[leaf.Subject.CommonName] {
		return RejectNameNotAllowed, fmt.Errorf("kubedefender webhook: client certificate common name %q is not among the allowed names", leaf.Subject.CommonName)
	}
	return "", nil
}
