package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubedefender/kubedefender/internal/errtest"
	"github.com/kubedefender/kubedefender/pki"
)

func file(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestValidate(t *testing.T) {
	pol, cert, key := file(t, "p.yaml", "x"), file(t, "tls.crt", "x"), file(t, "tls.key", "x")
	ca, err := pki.NewCA(pki.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clientCA := file(t, "client-ca.crt", string(ca.CertPEM))
	base := func() *ServeOptions {
		o := NewServeOptions()
		o.PolicyFile, o.WebhookListen, o.TLSCertFile, o.TLSPrivateKeyFile = pol, ":8443", cert, key
		return o
	}
	cases := []struct {
		name    string
		mutate  func(*ServeOptions)
		wantErr []string
	}{
		{"a webhook with its serving pair is valid", func(*ServeOptions) {}, nil},
		{"a passthrough proxy needs no client CA or front-proxy pair", func(o *ServeOptions) {
			o.ProxyListen, o.Upstream, o.AuthMode = ":6443", "https://10.0.0.1:6443", AuthPassthrough
		}, nil},
		{"a front-proxy proxy needs the client CA and the front-proxy pair", func(o *ServeOptions) {
			o.ProxyListen, o.Upstream = ":6443", "https://10.0.0.1:6443"
		}, []string{"--client-ca-file is required", "--front-proxy-cert-file and --front-proxy-key-file are required"}},
		{"an http upstream is refused", func(o *ServeOptions) {
			o.ProxyListen, o.Upstream, o.AuthMode = ":6443", "http://10.0.0.1:6443", AuthPassthrough
		}, []string{`--upstream "http://10.0.0.1:6443": want https://host:port`}},
		{"a redis password never appears in an error", func(o *ServeOptions) { o.RedisURL = "mysql://u:hunter2@h" }, []string{"--redis-url", `unsupported scheme "mysql"`}},
		{"a redis password with a slash never appears in an error", func(o *ServeOptions) { o.RedisURL = "redis://:hunter2/x@h:x" }, []string{"--redis-url", "port is not a number"}},
		{"a password with a slash under an unknown scheme never appears in an error", func(o *ServeOptions) { o.RedisURL = "http://u:12/hunter2@h" }, []string{"--redis-url", `unsupported scheme "http"`}},
		{"redis options need a redis URL", func(o *ServeOptions) { o.RedisKeyPrefix = "kd:v2:" }, []string{"--redis-* options need --redis-url"}},
		{"a client certificate for redis needs its key", func(o *ServeOptions) {
			o.RedisURL, o.RedisCertFile = "redis://h:6379", cert
		}, []string{"--redis-cert-file and --redis-key-file go together"}},
		{"missing files are named", func(o *ServeOptions) { o.RedisURL, o.RedisCAFile = "redis://h", "/nope/ca.pem" }, []string{"--redis-ca-file: stat /nope/ca.pem"}},
		{"budgets charged at the proxy and at the webhook would count twice", func(o *ServeOptions) { o.BudgetsAt = BudgetsAtProxy },
			[]string{"every delete would be charged twice", "--budgets-at=proxy needs --proxy-listen"}},
		{"a webhook that verifies the API server's client certificate is valid", func(o *ServeOptions) {
			o.WebhookClientCAFile, o.WebhookClientAllowedNames = clientCA, []string{"kube-apiserver"}
		}, nil},
		{"allowed names without a client CA are refused", func(o *ServeOptions) { o.WebhookClientAllowedNames = []string{"kube-apiserver"} },
			[]string{"--webhook-client-allowed-names needs --webhook-client-ca-file"}},
		{"an empty allowed name is refused", func(o *ServeOptions) {
			o.WebhookClientCAFile, o.WebhookClientAllowedNames = clientCA, []string{"kube-apiserver", ""}
		}, []string{"--webhook-client-allowed-names: an empty name matches no certificate"}},
		{"an allowed name with spaces around it is refused", func(o *ServeOptions) {
			o.WebhookClientCAFile, o.WebhookClientAllowedNames = clientCA, []string{"a", " kube-apiserver"}
		}, []string{`--webhook-client-allowed-names: " kube-apiserver" has leading or trailing spaces`}},
		{"a client CA file that holds no certificate is refused", func(o *ServeOptions) { o.WebhookClientCAFile = key },
			[]string{"--webhook-client-ca-file " + key + ": failed to parse the CA bundle"}},
		{"a client CA file that does not exist is named", func(o *ServeOptions) { o.WebhookClientCAFile = "/nope/ca.crt" },
			[]string{"--webhook-client-ca-file: stat /nope/ca.crt"}},
		{"a client CA without the webhook is refused", func(o *ServeOptions) {
			o.WebhookListen, o.ProxyListen, o.Upstream, o.AuthMode = "", ":6443", "https://10.0.0.1:6443", AuthPassthrough
			o.WebhookClientCAFile = clientCA
		}, []string{"--webhook-client-ca-file needs --webhook-listen"}},
		{"bad log settings are refused", func(o *ServeOptions) { o.LogLevel, o.LogFormat = "loud", "xml" }, []string{`--log-level "loud"`, `--log-format "xml"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := base()
			tc.mutate(o)
			err := o.Validate()
			errtest.Want(t, err, tc.wantErr...)
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error shows a password:\n%v", err)
			}
		})
	}
}

func TestCompleteReadsThePasswordFileAndKubeconfig(t *testing.T) {
	kubeconfig := file(t, "kubeconfig", `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`)
	o := NewServeOptions()
	o.RedisPasswordFile = file(t, "pw", "s3cret\n")
	o.Kubeconfig = kubeconfig
	c, err := o.Complete()
	if err != nil {
		t.Fatal(err)
	}
	if c.RedisPassword != "s3cret" {
		t.Errorf("password %q, want it without the newline", c.RedisPassword)
	}
	if c.Kube == nil || c.Kube.Host != "https://127.0.0.1:6443" || c.Kube.UserAgent != "kubedefender" {
		t.Errorf("kube config: %+v", c.Kube)
	}
}
