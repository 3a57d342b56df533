package app

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubedefender/kubedefender/config"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/pki"
	"github.com/kubedefender/kubedefender/policy"
)

func TestTheWebhookWarnsWhenItAcceptsAnyCaller(t *testing.T) {
	ca, err := pki.NewCA(pki.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	serving, err := ca.Issue(pki.ServingOptions{DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFiles(dir, ca, serving, false); err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse("p.yaml", []byte(goodPolicy))
	if err != nil {
		t.Fatal(err)
	}
	const (
		anyCaller = "the webhook does not authenticate its callers"
		anyName   = "the webhook accepts any client certificate its client CA signed"
	)
	cases := []struct {
		name         string
		caFile       string
		allowedNames []string
		wantWarn     string // "" when no warning is wanted
	}{
		{name: "without --webhook-client-ca-file serve warns what is exposed", wantWarn: anyCaller},
		{name: "with a client CA but no allowed names serve warns that any certificate of that CA may call", caFile: filepath.Join(dir, pki.CACertFile), wantWarn: anyName},
		{name: "with a client CA and allowed names serve does not warn", caFile: filepath.Join(dir, pki.CACertFile), allowedNames: []string{"kube-apiserver"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			o := config.NewServeOptions()
			o.WebhookListen, o.WebhookClientCAFile, o.WebhookClientAllowedNames = "127.0.0.1:0", tc.caFile, tc.allowedNames
			o.TLSCertFile, o.TLSPrivateKeyFile = filepath.Join(dir, pki.CertFile), filepath.Join(dir, pki.KeyFile)
			cfg := &config.Config{Options: *o, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			eng, err := limiter.NewEngine(limiter.EngineConfig{Policy: p})
			if err != nil {
				t.Fatal(err)
			}
			certs, _, err := newServingCertificates(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			comps, err := newWebhookComponents(cfg, eng, nil, newCascades(nil, cfg.Logger, p), certs)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // runs and shuts down at once, closing its listener
			if err := runAll(ctx, comps); err != nil {
				t.Errorf("the webhook did not shut down cleanly: %v", err)
			}
			for _, w := range []string{anyCaller, anyName} {
				if got, want := strings.Contains(logs.String(), w), w == tc.wantWarn; got != want {
					t.Errorf("warned %q: %v, want %v; logs:\n%s", w, got, want, logs.String())
				}
			}
			if tc.wantWarn != "" && !strings.Contains(logs.String(), "trip breakers") {
				t.Errorf("the warning does not say what is exposed:\n%s", logs.String())
			}
		})
	}
}
