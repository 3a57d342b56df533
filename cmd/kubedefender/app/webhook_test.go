package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"sigs.k8s.io/yaml"
)

func TestCertsGenerate(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name       string
		args       []string
		wantCode   int
		wantFiles  []string
		wantErrOut string
	}{
		{name: "a new CA and a serving pair are written", args: []string{"certs", "generate", "--ip", "127.0.0.1", "--dns", "localhost", "--out-dir", filepath.Join(dir, "a")},
			wantFiles: []string{"ca.crt", "tls.crt", "tls.key"}, wantErrOut: "valid until"},
		{name: "the CA key is written on request", args: []string{"certs", "generate", "--ip", "127.0.0.1", "--out-dir", filepath.Join(dir, "b"), "--write-ca-key"},
			wantFiles: []string{"ca.crt", "ca.key", "tls.crt", "tls.key"}},
		{name: "an existing CA signs a rotated pair", args: []string{"certs", "generate", "--dns", "x", "--out-dir", filepath.Join(dir, "c"),
			"--ca-cert", filepath.Join(dir, "b", "ca.crt"), "--ca-key", filepath.Join(dir, "b", "ca.key")},
			wantFiles: []string{"ca.crt", "tls.crt", "tls.key"}},
		{name: "missing names and directory are reported together", args: []string{"certs", "generate"}, wantCode: 1,
			wantErrOut: "--out-dir is required\ngive at least one --dns or --ip"},
		{name: "a bad IP is refused", args: []string{"certs", "generate", "--ip", "300.1.1.1", "--out-dir", dir}, wantCode: 1,
			wantErrOut: `--ip "300.1.1.1": not an IP address`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErrOut) {
				t.Fatalf("exit %d stderr %q, want %d containing %q", code, stderr, tc.wantCode, tc.wantErrOut)
			}
			out := tc.args[len(tc.args)-1]
			for i, a := range tc.args {
				if a == "--out-dir" {
					out = tc.args[i+1]
				}
			}
			for _, f := range tc.wantFiles {
				if _, err := os.Stat(filepath.Join(out, f)); err != nil {
					t.Errorf("%s: %v", f, err)
				}
			}
		})
	}
	ca1, _ := os.ReadFile(filepath.Join(dir, "b", "ca.crt"))
	ca2, _ := os.ReadFile(filepath.Join(dir, "c", "ca.crt"))
	if string(ca1) != string(ca2) {
		t.Errorf("a pair signed by an existing CA must keep its ca.crt (the caBundle)")
	}
}

func TestWebhookConfig(t *testing.T) {
	pol := writeFile(t, "policy.yaml", goodPolicy)
	ca := writeFile(t, "ca.crt", string(newTestCA(t).CertPEM))
	cases := []struct {
		name       string
		args       []string
		wantCode   int
		check      func(t *testing.T, cfg *admissionregistrationv1.ValidatingWebhookConfiguration)
		wantErrOut string
	}{
		{name: "a url configuration with the documented defaults is printed",
			args: []string{"webhook", "config", "--policy", pol, "--url", "https://127.0.0.1:8443/validate", "--ca-bundle-file", ca},
			check: func(t *testing.T, cfg *admissionregistrationv1.ValidatingWebhookConfiguration) {
				w := cfg.Webhooks[0]
				if *w.ClientConfig.URL != "https://127.0.0.1:8443/validate" || *w.FailurePolicy != "Ignore" || *w.TimeoutSeconds != 5 || len(w.ClientConfig.CABundle) == 0 {
					t.Errorf("webhook = %+v", w)
				}
			}},
		{name: "flags beat the defaults",
			args: []string{"webhook", "config", "--policy", pol, "--service", "kd/kd", "--failure-policy", "Fail",
				"--timeout-seconds", "2", "--exclude-namespaces=", "--namespace-selector", "protect=yes", "--name", "guard"},
			wantErrOut: "no --ca-bundle-file",
			check: func(t *testing.T, cfg *admissionregistrationv1.ValidatingWebhookConfiguration) {
				w := cfg.Webhooks[0]
				if cfg.Name != "guard" || *w.FailurePolicy != "Fail" || *w.TimeoutSeconds != 2 || w.ClientConfig.Service.Name != "kd" ||
					w.NamespaceSelector.MatchLabels["protect"] != "yes" || strings.Join(w.NamespaceSelector.MatchExpressions[0].Values, ",") != "kubedefender-system" {
					t.Errorf("configuration = %+v", cfg)
				}
			}},
		{name: "every bad flag is reported at once",
			args:     []string{"webhook", "config", "--failure-policy", "Maybe", "--timeout-seconds", "60"},
			wantCode: 1, wantErrOut: "--policy is required\ngive --url or --service NAMESPACE/NAME\n--failure-policy \"Maybe\": want Ignore or Fail\n--timeout-seconds 60: want 1 to 30"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tc.args...)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErrOut) {
				t.Fatalf("exit %d stderr %q, want %d containing %q", code, stderr, tc.wantCode, tc.wantErrOut)
			}
			if tc.check == nil {
				return
			}
			var cfg admissionregistrationv1.ValidatingWebhookConfiguration
			if err := yaml.UnmarshalStrict([]byte(stdout), &cfg); err != nil {
				t.Fatalf("failed to decode the printed configuration: %v\n%s", err, stdout)
			}
			tc.check(t, &cfg)
		})
	}
}
