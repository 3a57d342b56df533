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
	const warning = "the webhook does not authenticate its callers"
	cases := []struct {
		name     string
		caFile   string
		wantWarn bool
	}{
		{name: "without --webhook-client-ca-file serve warns what is exposed", wantWarn: true},
		{name: "with --webhook-client-ca-file serve does not warn", caFile: filepath.Join(dir, pki.CACertFile)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			o := config.NewServeOptions()
			o.WebhookListen, o.WebhookClientCAFile = "127.0.0.1:0", tc.caFile
			o.TLSCertFile, o.TLSPrivateKeyFile = filepath.Join(dir, pki.CertFile), filepath.Join(dir, pki.KeyFile)
			cfg := &config.Config{Options: *o, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			eng, err := limiter.NewEngine(limiter.EngineConfig{Policy: p})
			if err != nil {
				t.Fatal(err)
			}
			comp, err := newWebhookComponent(cfg, eng, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // runs and shuts down at once, closing its listener
			if err := comp.run(ctx); err != nil {
				t.Errorf("the webhook did not shut down cleanly: %v", err)
			}
			got := strings.Contains(logs.String(), warning)
			if got != tc.wantWarn {
				t.Errorf("warned %v, want %v; logs:\n%s", got, tc.wantWarn, logs.String())
			}
			if tc.wantWarn && !strings.Contains(logs.String(), "trip breakers") {
				t.Errorf("the warning does not say what is exposed:\n%s", logs.String())
			}
		})
	}
}
