package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// authInfo is how a kubeconfig authenticates: a bearer token or a client pair.
type authInfo struct {
	token    string
	certFile string
	keyFile  string
}

func writeKubeconfig(path, server, caFile, user string, auth authInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{
		Token:             auth.token,
		ClientCertificate: auth.certFile,
		ClientKey:         auth.keyFile,
	}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: user}
	cfg.CurrentContext = "e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("failed to write kubeconfig %s: %w", path, err)
	}
	return nil
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func (cp *ControlPlane) userFile(name, ext string) string {
	return cp.path("users", unsafeName.ReplaceAllString(name, "_")+ext)
}

// Token returns the static token of user (see UserAdmin, UserAlice, UserBob
// and Options.Users), failing t if there is none.
func (cp *ControlPlane) Token(t testing.TB, user string) string {
	t.Helper()
	tok, ok := cp.Tokens[user]
	if !ok {
		t.Fatalf("failed to find a token for user %q: known users are the keys of ControlPlane.Tokens", user)
	}
	return tok
}

// TokenConfig returns a rest.Config that authenticates as user by its static
// token and trusts the cluster CA.
func (cp *ControlPlane) TokenConfig(t testing.TB, user string) *rest.Config {
	t.Helper()
	return &rest.Config{
		Host:            cp.URL,
		BearerToken:     cp.Token(t, user),
		TLSClientConfig: rest.TLSClientConfig{CAFile: cp.CACertFile},
		UserAgent:       "kubedefender-e2e/" + user,
	}
}

// TokenKubeconfig writes a kubeconfig for user's static token and returns
// its path.
func (cp *ControlPlane) TokenKubeconfig(t testing.TB, user string) string {
	t.Helper()
	path := cp.userFile(user, ".token.kubeconfig")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatalf("failed to create %s: %v", filepath.Dir(path), err)
	}
	if err := writeKubeconfig(path, cp.URL, cp.CACertFile, user, authInfo{token: cp.Token(t, user)}); err != nil {
		t.Fatalf("%v", err)
	}
	return path
}

// IssueClientCert signs a client certificate for user with groups as its
// organizations, with the cluster CA that the API server trusts, and returns
// the certificate and key paths.
func (cp *ControlPlane) IssueClientCert(t testing.TB, user string, groups ...string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = cp.userFile(user, ".crt"), cp.userFile(user, ".key")
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		t.Fatalf("failed to create %s: %v", filepath.Dir(certFile), err)
	}
	if err := cp.ca.issueClient(user, groups, certFile, keyFile); err != nil {
		t.Fatalf("failed to issue a client certificate for %q: %v", user, err)
	}
	return certFile, keyFile
}

// CertKubeconfig issues a client certificate for user (see IssueClientCert)
// and writes a kubeconfig that uses it; it returns the kubeconfig path.
func (cp *ControlPlane) CertKubeconfig(t testing.TB, user string, groups ...string) string {
	t.Helper()
	certFile, keyFile := cp.IssueClientCert(t, user, groups...)
	path := cp.userFile(user, ".cert.kubeconfig")
	if err := writeKubeconfig(path, cp.URL, cp.CACertFile, user, authInfo{certFile: certFile, keyFile: keyFile}); err != nil {
		t.Fatalf("%v", err)
	}
	return path
}

// IssueServingCert signs a serving certificate for hosts (DNS names or IP
// addresses) with the cluster CA, e.g. for a webhook or proxy under test; the
// API server and every kubeconfig here already trust that CA (CACertFile).
func (cp *ControlPlane) IssueServingCert(t testing.TB, name string, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = cp.path("serving", unsafeName.ReplaceAllString(name, "_")+".crt"), cp.path("serving", unsafeName.ReplaceAllString(name, "_")+".key")
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		t.Fatalf("failed to create %s: %v", filepath.Dir(certFile), err)
	}
	if err := cp.ca.issueServing(name, hosts, certFile, keyFile); err != nil {
		t.Fatalf("failed to issue a serving certificate for %q: %v", name, err)
	}
	return certFile, keyFile
}

// ClientFor builds a clientset from cfg, failing t on error.
func ClientFor(t testing.TB, cfg *rest.Config) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("failed to build a client for %s: %v", cfg.Host, err)
	}
	return c
}

// CreateNamespace creates namespace name and its "default" service account
// (which pod admission requires; without a controller manager nothing else
// creates it), and returns the namespace.
func (cp *ControlPlane) CreateNamespace(t testing.TB, name string) *corev1.Namespace {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("failed to create namespace %s: %v", name, err)
	}
	_, err = cp.Client.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("failed to create service account %s/default: %v", name, err)
	}
	return ns
}

// KubectlTimeout bounds each Kubectl call.
const KubectlTimeout = 60 * time.Second

// Kubectl runs kubectl from PATH against kubeconfig (with a discovery cache
// inside the control plane dir) and returns what it printed. err is non-nil
// when kubectl exits non-zero; a missing kubectl fails t.
func (cp *ControlPlane) Kubectl(t testing.TB, kubeconfig string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	kubectl, lookErr := exec.LookPath("kubectl")
	if lookErr != nil {
		t.Fatalf("failed to find kubectl on PATH (install it, e.g. the kubectl Debian package): %v", lookErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), KubectlTimeout)
	defer cancel()
	full := append([]string{"--kubeconfig=" + kubeconfig, "--cache-dir=" + cp.path("kubectl-cache")}, args...)
	cmd := exec.CommandContext(ctx, kubectl, full...)
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if runErr := cmd.Run(); runErr != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			runErr = fmt.Errorf("timed out after %s: %w", KubectlTimeout, runErr)
		}
		err = fmt.Errorf("failed to run kubectl %v: %w", args, runErr)
	}
	return out.String(), errOut.String(), err
}
