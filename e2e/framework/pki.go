package framework

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubedefender/kubedefender/pki"
)

// authority is a CA (from the project's pki package) whose certificate and
// key are also written to CertFile and KeyFile for the components.
type authority struct {
	ca       *pki.CA
	CertFile string
	KeyFile  string
}

var pkiValidity = 24 * time.Hour

// newAuthority creates a self-signed CA and writes it to certFile/keyFile.
func newAuthority(commonName, certFile, keyFile string) (*authority, error) {
	ca, err := pki.NewCA(pki.CAOptions{CommonName: commonName, Validity: pkiValidity})
	if err != nil {
		return nil, err
	}
	if err := (&pki.Pair{CertPEM: ca.CertPEM, KeyPEM: ca.KeyPEM}).Write(certFile, keyFile); err != nil {
		return nil, err
	}
	return &authority{ca: ca, CertFile: certFile, KeyFile: keyFile}, nil
}

// issueClient signs a client certificate for user (groups become its
// organizations) and writes it with its key.
func (a *authority) issueClient(user string, groups []string, certFile, keyFile string) error {
	p, err := a.ca.IssueClient(pki.ClientOptions{CommonName: user, Groups: groups, Validity: pkiValidity})
	if err != nil {
		return err
	}
	return p.Write(certFile, keyFile)
}

// issueServing signs a serving certificate for hosts (DNS names or IP
// addresses) and writes it with its key.
func (a *authority) issueServing(name string, hosts []string, certFile, keyFile string) error {
	o := pki.ServingOptions{CommonName: name, Validity: pkiValidity}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			o.IPs = append(o.IPs, ip)
		} else {
			o.DNSNames = append(o.DNSNames, h)
		}
	}
	p, err := a.ca.Issue(o)
	if err != nil {
		return err
	}
	return p.Write(certFile, keyFile)
}

// writeServiceAccountKeys writes an RSA key pair for signing service account
// tokens: the private key (PKCS#1) and the public key (PKIX).
func writeServiceAccountKeys(privateFile, publicFile string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("failed to generate the service account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("failed to marshal the service account public key: %w", err)
	}
	priv := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(privateFile, priv, 0o600); err != nil {
		return fmt.Errorf("failed to write the service account private key: %w", err)
	}
	if err := os.WriteFile(publicFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return fmt.Errorf("failed to write the service account public key: %w", err)
	}
	return nil
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("failed to generate a token: %w", err)
	}
	return fmt.Sprintf("%x", b), nil
}

// WebhookClientName is the common name of the client certificate the API
// server presents to admission webhooks (Options.WebhookClientAuth): what a
// webhook passes to --webhook-client-allowed-names.
const WebhookClientName = "kube-apiserver-webhook-client"

// admissionConfig points the ValidatingAdmissionWebhook plugin at a kubeconfig
// whose users are keyed by webhook host (host:port, or "*" for any).
const admissionConfig = `apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: %q
`

// writeWebhookClientAuth issues the API server's webhook client pair from a
// CA of its own, and writes the kubeconfig and the AdmissionConfiguration that
// make the API server present it to every webhook.
func (cp *ControlPlane) writeWebhookClientAuth() error {
	p := func(name string) string { return cp.path("pki", name) }
	var err error
	if cp.webhookCA, err = newAuthority("kubedefender-e2e-webhook-client-ca", p("webhook-client-ca.crt"), p("webhook-client-ca.key")); err != nil {
		return err
	}
	cp.WebhookClientCACertFile, cp.WebhookClientCAKeyFile = cp.webhookCA.CertFile, cp.webhookCA.KeyFile
	cp.WebhookClientCertFile, cp.WebhookClientKeyFile = p("webhook-client.crt"), p("webhook-client.key")
	if err := cp.webhookCA.issueClient(WebhookClientName, nil, cp.WebhookClientCertFile, cp.WebhookClientKeyFile); err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	// "*" matches every webhook host; a real cluster may key users by the
	// webhook's host:port (its Service name for a service reference).
	cfg.AuthInfos["*"] = &clientcmdapi.AuthInfo{ClientCertificate: cp.WebhookClientCertFile, ClientKey: cp.WebhookClientKeyFile}
	cp.WebhookClientKubeconfig = p("webhook-client.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, cp.WebhookClientKubeconfig); err != nil {
		return fmt.Errorf("failed to write the webhook client kubeconfig: %w", err)
	}
	cp.AdmissionConfigFile = cp.path("admission-config.yaml")
	if err := os.WriteFile(cp.AdmissionConfigFile, fmt.Appendf(nil, admissionConfig, cp.WebhookClientKubeconfig), 0o644); err != nil {
		return fmt.Errorf("failed to write the admission configuration: %w", err)
	}
	return nil
}
