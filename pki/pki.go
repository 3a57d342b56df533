package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Defaults.
const (
	DefaultCAValidity      = 10 * 365 * 24 * time.Hour
	DefaultServingValidity = 365 * 24 * time.Hour
	// backdate keeps a certificate valid on a machine whose clock is a little
	// behind the one that issued it.
	backdate = 5 * time.Minute
)

// CA is a certificate authority that signs serving pairs.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// CertPEM and KeyPEM are Cert and Key encoded.
	CertPEM, KeyPEM []byte
}

// CAOptions configure NewCA.
type CAOptions struct {
	// CommonName of the CA; empty means "kubedefender-ca".
	CommonName string
	// Validity; zero means DefaultCAValidity.
	Validity time.Duration
	// Now is the issuing time; zero means time.Now().
	Now time.Time
}

// NewCA makes a self-signed CA.
func NewCA(o CAOptions) (*CA, error) {
	if o.CommonName == "" {
		o.CommonName = "kubedefender-ca"
	}
	if o.Validity <= 0 {
		o.Validity = DefaultCAValidity
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: o.CommonName, Organization: []string{"kubedefender"}},
		NotBefore:             o.Now.Add(-backdate),
		NotAfter:              o.Now.Add(o.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	p, key, err := sign(tmpl, nil, nil, "CA")
	if err != nil {
		return nil, err
	}
	return &CA{Cert: p.Cert, Key: key, CertPEM: p.CertPEM, KeyPEM: p.KeyPEM}, nil
}

// sign makes a key for tmpl and signs it with parent and parentKey (nil:
// self-signed). what names the certificate in errors.
func sign(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, what string) (*Pair, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to generate %s key: %w", what, err)
	}
	if tmpl.SerialNumber, err = serialNumber(); err != nil {
		return nil, nil, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to sign %s certificate: %w", what, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to parse %s certificate: %w", what, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return &Pair{CertPEM: encodeCert(der), KeyPEM: keyPEM, Cert: cert}, key, nil
}

// LoadCA reads a CA pair written by WriteFiles (or any PEM CA with an ECDSA,
// PKCS#8 or SEC 1 key).
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("failed to read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("failed to read CA key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("failed to load CA: %s holds no PEM CERTIFICATE", certFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("failed to parse CA certificate %s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("failed to load CA: %s is not a CA certificate", certFile)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("failed to load CA: %s holds no PEM key", keyFile)
	}
	var key *ecdsa.PrivateKey
	switch kb.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(kb.Bytes)
	case "PRIVATE KEY":
		var k any
		k, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
		if err == nil {
			var ok bool
			if key, ok = k.(*ecdsa.PrivateKey); !ok {
				err = errors.New("not an ECDSA key")
			}
		}
	default:
		err = fmt.Errorf("PEM block %q is not supported", kb.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("failed to parse CA key %s: %w", keyFile, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("failed to load CA: the key in %s does not match the certificate in %s", keyFile, certFile)
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// ServingOptions configure CA.Issue.
type ServingOptions struct {
	// CommonName; empty means the first DNS name, else the first IP.
	CommonName string
	// DNSNames and IPs the certificate is valid for; at least one is required.
	DNSNames []string
	IPs      []net.IP
	// Validity; zero means DefaultServingValidity.
	Validity time.Duration
	// Now is the issuing time; zero means time.Now().
	Now time.Time
}

// Pair is a serving certificate and its key, PEM encoded.
type Pair struct {
	CertPEM, KeyPEM []byte
	Cert            *x509.Certificate
}

// Issue signs a serving pair (server authentication) for o's names.
func (ca *CA) Issue(o ServingOptions) (*Pair, error) {
	if len(o.DNSNames) == 0 && len(o.IPs) == 0 {
		return nil, errors.New("failed to issue serving certificate: give at least one DNS name or IP address")
	}
	for _, n := range o.DNSNames {
		if err := ValidateDNSName(n); err != nil {
			return nil, fmt.Errorf("failed to issue serving certificate for %q: %w", n, err)
		}
	}
	if o.CommonName == "" {
		if len(o.DNSNames) > 0 {
			o.CommonName = o.DNSNames[0]
		} else {
			o.CommonName = o.IPs[0].String()
		}
	}
	return ca.issueLeaf(&x509.Certificate{
		Subject:     pkix.Name{CommonName: o.CommonName, Organization: []string{"kubedefender"}},
		DNSNames:    o.DNSNames,
		IPAddresses: o.IPs,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, o.Validity, o.Now, "serving")
}

// issueLeaf signs tmpl, a leaf certificate of kind what ("serving",
// "client"), valid from a little before now (zero: time.Now()) for validity
// (zero or less: DefaultServingValidity), but never beyond the CA itself.
// tmpl carries the names and the extended key usage; issueLeaf sets the
// validity window and the key usage.
func (ca *CA) issueLeaf(tmpl *x509.Certificate, validity time.Duration, now time.Time, what string) (*Pair, error) {
	if validity <= 0 {
		validity = DefaultServingValidity
	}
	if now.IsZero() {
		now = time.Now()
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl.NotBefore = now.Add(-backdate)
	tmpl.NotAfter = notAfter
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	p, _, err := sign(tmpl, ca.Cert, ca.Key, what)
	return p, err
}

// ClientOptions configure CA.IssueClient.
type ClientOptions struct {
	// CommonName is the user name a Kubernetes API server reads; required.
	CommonName string
	// Groups become the certificate's organizations (Kubernetes groups).
	Groups []string
	// Validity; zero means DefaultServingValidity.
	Validity time.Duration
	// Now is the issuing time; zero means time.Now().
	Now time.Time
}

// IssueClient signs a client pair (client authentication) for a user.
func (ca *CA) IssueClient(o ClientOptions) (*Pair, error) {
	if o.CommonName == "" {
		return nil, errors.New("failed to issue client certificate: a common name (the user) is required")
	}
	return ca.issueLeaf(&x509.Certificate{
		Subject:     pkix.Name{CommonName: o.CommonName, Organization: o.Groups},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, o.Validity, o.Now, "client")
}

// Write writes the pair to certFile (0644) and keyFile (0600), each through a
// temporary file and a rename.
func (p *Pair) Write(certFile, keyFile string) error {
	if err := writeAtomic(certFile, p.CertPEM, 0o644); err != nil {
		return err
	}
	return writeAtomic(keyFile, p.KeyPEM, 0o600)
}

// File names WriteFiles and the certs command use.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
	CertFile   = "tls.crt"
	KeyFile    = "tls.key"
	// ClientCertFile and ClientKeyFile hold a client pair (e.g. the API
	// server's, to authenticate to the webhook).
	ClientCertFile = "client.crt"
	ClientKeyFile  = "client.key"
)

// Write writes the CA certificate to certFile (0644) and, when keyFile is not
// empty, its key to keyFile (0600), each through a temporary file and a rename.
func (ca *CA) Write(certFile, keyFile string) error {
	if err := writeAtomic(certFile, ca.CertPEM, 0o644); err != nil {
		return err
	}
	if keyFile == "" {
		return nil
	}
	return writeAtomic(keyFile, ca.KeyPEM, 0o600)
}

// ValidateDNSName reports why name cannot be a DNS name in a serving
// certificate: it must be a lowercase RFC 1123 subdomain (at most 253
// characters, labels of [a-z0-9-] up to 63 characters that start and end
// with a letter or digit), optionally with a leading "*." wildcard label.
func ValidateDNSName(name string) error {
	var msgs []string
	if strings.HasPrefix(name, "*.") {
		msgs = validation.IsWildcardDNS1123Subdomain(name)
	} else {
		msgs = validation.IsDNS1123Subdomain(name)
	}
	for _, label := range strings.Split(strings.TrimPrefix(name, "*."), ".") {
		if len(label) > validation.DNS1123LabelMaxLength {
			msgs = append(msgs, fmt.Sprintf("label %.10s… is longer than %d characters", label, validation.DNS1123LabelMaxLength))
		}
	}
	if len(msgs) > 0 {
		return fmt.Errorf("not a DNS name: %s", strings.Join(msgs, "; "))
	}
	return nil
}

// WriteFiles writes ca.crt, tls.crt and tls.key into dir (created 0700 if
// missing), and ca.key too when withCAKey is set. Keys are written 0600.
// Each file is written to a temporary name and renamed, so a process
// watching dir never reads half a file.
func WriteFiles(dir string, ca *CA, pair *Pair, withCAKey bool) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("failed to create %s: %w", dir, err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{CACertFile, ca.CertPEM, 0o644},
		{CertFile, pair.CertPEM, 0o644},
		{KeyFile, pair.KeyPEM, 0o600},
	}
	if withCAKey {
		files = append(files, struct {
			name string
			data []byte
			mode os.FileMode
		}{CAKeyFile, ca.KeyPEM, 0o600})
	}
	for _, f := range files {
		if err := writeAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	return nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("failed to generate a serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("failed to encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}
