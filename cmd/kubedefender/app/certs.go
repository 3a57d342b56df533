package app

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kubedefender/kubedefender/pki"
)

func newCertsCommand(s Streams) *cobra.Command {
	return newGroupCommand("certs", "Generate serving certificates for the webhook and proxy", newCertsGenerateCommand(s))
}

// certsOptions are the flags of certs generate.
type certsOptions struct {
	DNSNames   []string
	IPs        []string
	Client     string
	OutDir     string
	CACertFile string
	CAKeyFile  string
	WriteCAKey bool
	Force      bool
	Validity   time.Duration
}

// Bounds of --validity: shorter than an hour is a typo (and expires before
// anyone notices), longer than the CA's own default is a certificate nobody
// will remember to rotate.
const (
	minValidity = time.Hour
	maxValidity = pki.DefaultCAValidity
)

func (o *certsOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringSliceVar(&o.DNSNames, "dns", nil, "DNS name the serving certificate is valid for (repeatable), e.g. kubedefender.kubedefender-system.svc")
	f.StringSliceVar(&o.IPs, "ip", nil, "IP address the serving certificate is valid for (repeatable), e.g. 127.0.0.1")
	f.StringVar(&o.Client, "client", "", "also issue a client pair (client.crt, client.key) with this common name, for the API server to authenticate to the webhook (serve --webhook-client-ca-file ca.crt --webhook-client-allowed-names NAME)")
	f.StringVar(&o.OutDir, "out-dir", "", "directory to write ca.crt, tls.crt and tls.key into (required); a CA already there (ca.crt and ca.key) signs the new pairs")
	f.StringVar(&o.CACertFile, "ca-cert", "", "sign with this existing CA certificate (with --ca-key) instead of a new CA: rotates the serving pair without changing the caBundle")
	f.StringVar(&o.CAKeyFile, "ca-key", "", "key of --ca-cert")
	f.BoolVar(&o.WriteCAKey, "write-ca-key", false, "also write the new CA's key as ca.key (0600), so a later run can reuse the CA to rotate the pairs; without it the CA key is discarded")
	f.BoolVar(&o.Force, "force", false, "replace a CA certificate already in --out-dir with a new one (every caBundle and --webhook-client-ca-file that holds the old one must then be updated)")
	f.DurationVar(&o.Validity, "validity", pki.DefaultServingValidity, "validity of the serving and client certificates (1h to 87600h, and never past the CA's)")
}

// Validate reports every problem at once. It reads nothing from disk.
func (o *certsOptions) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.OutDir == "" {
		add("--out-dir is required")
	}
	if len(o.DNSNames) == 0 && len(o.IPs) == 0 && o.Client == "" {
		add("give at least one --dns or --ip (or --client NAME for a client pair alone)")
	}
	for _, n := range o.DNSNames {
		if err := pki.ValidateDNSName(n); err != nil {
			add("--dns %q: %v", n, err)
		}
	}
	for _, ip := range o.IPs {
		if net.ParseIP(ip) == nil {
			add("--ip %q: not an IP address", ip)
		}
	}
	if o.Client != "" && strings.TrimSpace(o.Client) != o.Client {
		add("--client %q: a common name without leading or trailing spaces", o.Client)
	}
	if (o.CACertFile == "") != (o.CAKeyFile == "") {
		add("--ca-cert and --ca-key go together")
	}
	if o.CACertFile != "" && o.WriteCAKey {
		add("--write-ca-key only applies to a new CA, not to --ca-cert/--ca-key")
	}
	if o.Validity < minValidity || o.Validity > maxValidity {
		add("--validity %s: want 1h to %s", o.Validity, maxValidity)
	}
	return errors.Join(errs...)
}

// loadOrNewCA picks the CA that signs: --ca-cert/--ca-key; else the CA
// already in --out-dir (ca.crt with ca.key); else a new one. It never replaces
// a CA certificate in --out-dir with a different one unless --force is set:
// that certificate is some webhook's caBundle, and replacing it silently
// makes the API server distrust the webhook. reused says the CA came from
// --out-dir.
func (o *certsOptions) loadOrNewCA() (ca *pki.CA, reused bool, err error) {
	dirCert, dirKey := filepath.Join(o.OutDir, pki.CACertFile), filepath.Join(o.OutDir, pki.CAKeyFile)
	existing, err := os.ReadFile(dirCert)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		existing = nil
	case err != nil:
		return nil, false, fmt.Errorf("failed to read %s: %w", dirCert, err)
	}
	if o.CACertFile != "" {
		if ca, err = pki.LoadCA(o.CACertFile, o.CAKeyFile); err != nil {
			return nil, false, err
		}
		if existing != nil && !bytes.Equal(existing, ca.CertPEM) && !o.Force {
			return nil, false, fmt.Errorf("failed to generate: %s holds a different CA than --ca-cert %s; refusing to replace it without --force (anything that trusts it would stop trusting the webhook)", dirCert, o.CACertFile)
		}
		return ca, false, nil
	}
	if existing == nil || o.Force {
		ca, err = pki.NewCA(pki.CAOptions{})
		return ca, false, err
	}
	if _, err := os.Stat(dirKey); err != nil {
		return nil, false, fmt.Errorf("failed to generate: %s exists but %s does not, so it cannot sign; refusing to replace the CA without --force (anything that trusts it would stop trusting the webhook), or pass --ca-cert/--ca-key", dirCert, dirKey)
	}
	if ca, err = pki.LoadCA(dirCert, dirKey); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

func newCertsGenerateCommand(s Streams) *cobra.Command {
	o := &certsOptions{}
	cmd := &cobra.Command{
		Use:   "generate --dns NAME|--ip IP ... [--client NAME] --out-dir DIR",
		Short: "Write a CA (ca.crt) and a serving pair it signed (tls.crt, tls.key) for the given names, and optionally a client pair (client.crt, client.key)",
		Example: `  # for the webhook in a cluster, reached through its Service, and the API server's client pair
  kubedefender certs generate --dns kubedefender.kubedefender-system.svc --client kube-apiserver --out-dir ./certs --write-ca-key
  # for a webhook on this machine
  kubedefender certs generate --ip 127.0.0.1 --dns localhost --out-dir ./certs --write-ca-key
  # rotate the serving pair, keeping the caBundle (the CA in ./certs signs it)
  kubedefender certs generate --ip 127.0.0.1 --dns localhost --out-dir ./certs
  # or sign with a CA kept elsewhere
  kubedefender certs generate --ip 127.0.0.1 --ca-cert ca/ca.crt --ca-key ca/ca.key --out-dir ./certs`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			return o.run(s)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func (o *certsOptions) run(s Streams) error {
	var ips []net.IP
	for _, ip := range o.IPs {
		ips = append(ips, net.ParseIP(ip))
	}
	ca, reused, err := o.loadOrNewCA()
	if err != nil {
		return err
	}
	var serving, client *pki.Pair
	if len(o.DNSNames) > 0 || len(ips) > 0 {
		if serving, err = ca.Issue(pki.ServingOptions{DNSNames: o.DNSNames, IPs: ips, Validity: o.Validity}); err != nil {
			return err
		}
	}
	if o.Client != "" {
		if client, err = ca.IssueClient(pki.ClientOptions{CommonName: o.Client, Validity: o.Validity}); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(o.OutDir, 0o700); err != nil {
		return fmt.Errorf("failed to create %s: %w", o.OutDir, err)
	}
	path := func(name string) string { return filepath.Join(o.OutDir, name) }
	var written []string
	caKey := ""
	if o.WriteCAKey && !reused {
		caKey = path(pki.CAKeyFile)
	}
	if err := ca.Write(path(pki.CACertFile), caKey); err != nil {
		return err
	}
	written = append(written, path(pki.CACertFile))
	if caKey != "" {
		written = append(written, caKey)
	}
	if serving != nil {
		if err := serving.Write(path(pki.CertFile), path(pki.KeyFile)); err != nil {
			return err
		}
		written = append(written, path(pki.CertFile), path(pki.KeyFile))
	}
	if client != nil {
		if err := client.Write(path(pki.ClientCertFile), path(pki.ClientKeyFile)); err != nil {
			return err
		}
		written = append(written, path(pki.ClientCertFile), path(pki.ClientKeyFile))
	}
	for _, f := range written {
		fmt.Fprintln(s.Out, f)
	}
	if reused {
		fmt.Fprintf(s.Err, "signed with the CA already in %s (expires %s); the caBundle does not change\n",
			path(pki.CACertFile), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	for _, p := range []struct {
		what string
		pair *pki.Pair
	}{{"serving", serving}, {"client", client}} {
		if p.pair == nil {
			continue
		}
		if want := time.Now().Add(o.Validity); p.pair.Cert.NotAfter.Before(want.Add(-time.Hour)) {
			fmt.Fprintf(s.Err, "note: the %s certificate ends with its CA, before --validity %s\n", p.what, o.Validity)
		}
	}
	if serving != nil {
		fmt.Fprintf(s.Err, "serving certificate for %v valid until %s; put %s into the webhook's caBundle (kubedefender webhook config --ca-bundle-file)\n",
			append(append([]string{}, o.DNSNames...), o.IPs...), serving.Cert.NotAfter.UTC().Format(time.RFC3339), path(pki.CACertFile))
	}
	if client != nil {
		fmt.Fprintf(s.Err, "client certificate for %q valid until %s; give it to the API server (AdmissionConfiguration kubeconfig) and run serve --webhook-client-ca-file %s --webhook-client-allowed-names %s\n",
			o.Client, client.Cert.NotAfter.UTC().Format(time.RFC3339), path(pki.CACertFile), o.Client)
	}
	return nil
}
