package proxy

import (
	"crypto/x509"

	"github.com/kubedefender/kubedefender/pki"
)

// leaf returns the certificate the next handshake serves (reloading a
// rotated pair first, as a handshake would).
func (kp *keyPair) leaf() *x509.Certificate {
	c, _ := kp.current()
	return pki.Leaf(c)
}
