package app

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"sigs.k8s.io/yaml"

	"github.com/kubedefender/kubedefender/pki"
)

func newTestCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(pki.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s holds no PEM", file)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustRead(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// verifies reports whether leaf chains to the CA in caFile for usage.
func verifies(t *testing.T, leaf *x509.Certificate, caFile string, usage x509.ExtKeyUsage) error {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, caFile))
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func TestCertsGenerateNeverReplacesACASilently(t *testing.T) {
	t.Run("a second run into the same directory reuses the CA there and the caBundle stays valid", func(t *testing.T) {
		dir := t.TempDir()
		if code, _, stderr := run(t, "certs", "generate", "--dns", "localhost", "--out-dir", dir, "--write-ca-key"); code != 0 {
			t.Fatal(stderr)
		}
		before := mustRead(t, filepath.Join(dir, "ca.crt"))
		code, _, stderr := run(t, "certs", "generate", "--dns", "kubedefender.kubedefender-system.svc", "--out-dir", dir)
		if code != 0 || !strings.Contains(stderr, "signed with the CA already in") {
			t.Fatalf("exit %d stderr %q", code, stderr)
		}
		if after := mustRead(t, filepath.Join(dir, "ca.crt")); after != before {
			t.Fatal("ca.crt was replaced")
		}
		leaf := readCert(t, filepath.Join(dir, "tls.crt"))
		if err := verifies(t, leaf, filepath.Join(dir, "ca.crt"), x509.ExtKeyUsageServerAuth); err != nil || leaf.DNSNames[0] != "kubedefender.kubedefender-system.svc" {
			t.Fatalf("the new serving pair does not chain to the kept CA: %v (%v)", err, leaf.DNSNames)
		}
	})
	t.Run("a CA certificate without its key is refused without --force and kept", func(t *testing.T) {
		dir := t.TempDir()
		if code, _, stderr := run(t, "certs", "generate", "--dns", "localhost", "--out-dir", dir); code != 0 {
			t.Fatal(stderr)
		}
		before := mustRead(t, filepath.Join(dir, "ca.crt"))
		code, _, stderr := run(t, "certs", "generate", "--dns", "localhost", "--out-dir", dir)
		if code != 1 || !strings.Contains(stderr, "refusing to replace the CA without --force") {
			t.Fatalf("exit %d stderr %q, want a refusal that names --force", code, stderr)
		}
		if mustRead(t, filepath.Join(dir, "ca.crt")) != before {
			t.Fatal("ca.crt was replaced")
		}
		if code, _, stderr := run(t, "certs", "generate", "--dns", "localhost", "--out-dir", dir, "--force"); code != 0 {
			t.Fatal(stderr)
		}
		if mustRead(t, filepath.Join(dir, "ca.crt")) == before {
			t.Fatal("--force did not make a new CA")
		}
		if err := verifies(t, readCert(t, filepath.Join(dir, "tls.crt")), filepath.Join(dir, "ca.crt"), x509.ExtKeyUsageServerAuth); err != nil {
			t.Fatalf("the serving pair does not chain to the new CA: %v", err)
		}
	})
	t.Run("a --ca-cert that differs from the CA in --out-dir is refused without --force", func(t *testing.T) {
		dir, other := t.TempDir(), t.TempDir()
		for _, d := range []string{dir, other} {
			if code, _, stderr := run(t, "certs", "generate", "--dns", "localhost", "--out-dir", d, "--write-ca-key"); code != 0 {
				t.Fatal(stderr)
			}
		}
		before := mustRead(t, filepath.Join(dir, "ca.crt"))
		code, _, stderr := run(t, "certs", "generate", "--dns", "localhost", "--out-dir", dir,
			"--ca-cert", filepath.Join(other, "ca.crt"), "--ca-key", filepath.Join(other, "ca.key"))
		if code != 1 || !strings.Contains(stderr, "holds a different CA than --ca-cert") || mustRead(t, filepath.Join(dir, "ca.crt")) != before {
			t.Fatalf("exit %d stderr %q, want a refusal and ca.crt kept", code, stderr)
		}
	})
}

func TestCertsGenerateValidatesNamesAndValidity(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		wantErr []string
	}{
		{name: "bad DNS names are each reported",
			args:    []string{"--dns", "Kubedefender.svc", "--dns", "under_score.svc", "--dns", "a..b", "--dns", "-lead.svc"},
			wantErr: []string{`--dns "Kubedefender.svc": not a DNS name`, `--dns "under_score.svc"`, `--dns "a..b"`, `--dns "-lead.svc"`}},
		{name: "a zero validity is refused", args: []string{"--dns", "localhost", "--validity", "0s"}, wantErr: []string{"--validity 0s: want 1h to 87600h0m0s"}},
		{name: "a negative validity is refused", args: []string{"--dns", "localhost", "--validity", "-24h"}, wantErr: []string{"--validity -24h0m0s: want 1h"}},
		{name: "a validity of a nanosecond is refused", args: []string{"--dns", "localhost", "--validity", "1ns"}, wantErr: []string{"--validity 1ns: want 1h"}},
		{name: "a validity of a century is refused", args: []string{"--dns", "localhost", "--validity", "876000h"}, wantErr: []string{"--validity 876000h0m0s: want 1h to 87600h0m0s"}},
		{name: "a client name with spaces around it is refused", args: []string{"--client", " apiserver"}, wantErr: []string{`--client " apiserver"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			code, _, stderr := run(t, append([]string{"certs", "generate", "--out-dir", dir}, tc.args...)...)
			if code != 1 {
				t.Fatalf("exit %d, want 1; stderr %q", code, stderr)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q lacks %q", stderr, w)
				}
			}
			if _, err := os.Stat(dir); err == nil {
				t.Error("a refused run wrote files")
			}
		})
	}
	t.Run("a wildcard name and a day's validity are accepted", func(t *testing.T) {
		if code, _, stderr := run(t, "certs", "generate", "--dns", "*.kubedefender-system.svc", "--validity", "24h", "--out-dir", t.TempDir()); code != 0 {
			t.Fatal(stderr)
		}
	})
}

func TestCertsGenerateIssuesTheAPIServersClientPair(t *testing.T) {
	dir := t.TempDir()
	code, stdout, stderr := run(t, "certs", "generate", "--dns", "kubedefender.kubedefender-system.svc", "--client", "kube-apiserver", "--out-dir", dir, "--write-ca-key")
	if code != 0 {
		t.Fatal(stderr)
	}
	if !strings.Contains(stdout, filepath.Join(dir, "client.crt")) || !strings.Contains(stderr, "--webhook-client-allowed-names kube-apiserver") {
		t.Errorf("stdout %q stderr %q: want the client files listed and the serve flags named", stdout, stderr)
	}
	c := readCert(t, filepath.Join(dir, "client.crt"))
	if c.Subject.CommonName != "kube-apiserver" || len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("client certificate CN %q usages %v, want kube-apiserver and client auth only", c.Subject.CommonName, c.ExtKeyUsage)
	}
	if err := verifies(t, c, filepath.Join(dir, "ca.crt"), x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("the client certificate does not chain to ca.crt: %v", err)
	}
	if err := verifies(t, readCert(t, filepath.Join(dir, "tls.crt")), filepath.Join(dir, "ca.crt"), x509.ExtKeyUsageClientAuth); err == nil {
		t.Error("the serving certificate also authenticates as a client; it must not")
	}
	if fi, err := os.Stat(filepath.Join(dir, "client.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("client.key: %v %v, want mode 0600", fi, err)
	}

	t.Run("a client pair alone is signed by the CA already there", func(t *testing.T) {
		before := mustRead(t, filepath.Join(dir, "tls.crt"))
		if code, _, stderr := run(t, "certs", "generate", "--client", "other-apiserver", "--out-dir", dir); code != 0 {
			t.Fatal(stderr)
		}
		if readCert(t, filepath.Join(dir, "client.crt")).Subject.CommonName != "other-apiserver" || mustRead(t, filepath.Join(dir, "tls.crt")) != before {
			t.Error("want a new client pair and the serving pair untouched")
		}
	})
}

func TestWebhookConfigAcceptsOnlyCACertificates(t *testing.T) {
	pol := writeFile(t, "policy.yaml", goodPolicy)
	dir := t.TempDir()
	if code, _, stderr := run(t, "certs", "generate", "--dns", "localhost", "--out-dir", dir, "--write-ca-key"); code != 0 {
		t.Fatal(stderr)
	}
	ca, key, leaf := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "tls.crt")
	twoCAs := writeFile(t, "bundle.crt", mustRead(t, ca)+"# the next CA, for a rotation\n"+string(newTestCA(t).CertPEM))
	keyAndCert := writeFile(t, "both.pem", mustRead(t, ca)+mustRead(t, key))
	cases := []struct {
		name     string
		file     string
		wantCode int
		wantErr  string
	}{
		{name: "the CA certificate is accepted", file: ca},
		{name: "a bundle of two CA certificates is accepted", file: twoCAs},
		{name: "the serving key is refused as a key", file: key, wantCode: 1, wantErr: "holds a private key (EC PRIVATE KEY): give the CA certificate (ca.crt), never a key"},
		{name: "a CA certificate followed by a key is refused", file: keyAndCert, wantCode: 1, wantErr: "holds a private key"},
		{name: "the serving certificate is refused as not a CA", file: leaf, wantCode: 1, wantErr: "certificate 1 (localhost) is not a CA certificate"},
		{name: "junk is refused", file: writeFile(t, "junk", "hello\n"), wantCode: 1, wantErr: "holds no PEM certificate"},
		{name: "a PEM block that is not a certificate is refused", file: writeFile(t, "csr", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
			wantCode: 1, wantErr: "holds a PEM CERTIFICATE REQUEST block"},
		{name: "a certificate that does not parse is refused", file: writeFile(t, "bad", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
			wantCode: 1, wantErr: "certificate 1 does not parse"},
		{name: "a missing file is reported", file: filepath.Join(dir, "nope"), wantCode: 1, wantErr: "failed to read --ca-bundle-file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, "webhook", "config", "--policy", pol, "--url", "https://127.0.0.1:8443/validate", "--ca-bundle-file", tc.file)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErr) {
				t.Fatalf("exit %d stderr %q, want %d containing %q", code, stderr, tc.wantCode, tc.wantErr)
			}
			if strings.Contains(stdout, "PRIVATE KEY") || (tc.wantCode != 0 && stdout != "") {
				t.Fatalf("printed a configuration:\n%s", stdout)
			}
		})
	}
}

func TestWebhookConfigURLPath(t *testing.T) {
	pol := writeFile(t, "policy.yaml", goodPolicy)
	cases := []struct {
		name     string
		url      string
		wantURL  string
		wantCode int
		wantErr  string
	}{
		{name: "a URL without a path gets /validate", url: "https://10.0.0.5:8443", wantURL: "https://10.0.0.5:8443/validate", wantErr: `note: --url "https://10.0.0.5:8443" has no path: using https://10.0.0.5:8443/validate`},
		{name: "a URL with / alone gets /validate", url: "https://guard.example:8443/", wantURL: "https://guard.example:8443/validate"},
		{name: "a URL with a path keeps it", url: "https://guard.example/kd/validate", wantURL: "https://guard.example/kd/validate"},
		{name: "a URL with a query is refused", url: "https://guard.example/validate?x=1", wantCode: 1, wantErr: "a query or fragment is not allowed"},
		{name: "a URL with user info is refused", url: "https://u:p@guard.example/validate", wantCode: 1, wantErr: "user info is not allowed"},
		{name: "a plain http URL is refused", url: "http://guard.example/validate", wantCode: 1, wantErr: "want https://host[:port]/path"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, "webhook", "config", "--policy", pol, "--url", tc.url)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErr) {
				t.Fatalf("exit %d stderr %q, want %d containing %q", code, stderr, tc.wantCode, tc.wantErr)
			}
			if tc.wantCode != 0 {
				return
			}
			var cfg admissionregistrationv1.ValidatingWebhookConfiguration
			if err := yaml.UnmarshalStrict([]byte(stdout), &cfg); err != nil {
				t.Fatal(err)
			}
			if got := *cfg.Webhooks[0].ClientConfig.URL; got != tc.wantURL {
				t.Errorf("url %q, want %q", got, tc.wantURL)
			}
		})
	}
}
