package app

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/kubedefender/kubedefender/pki"
)

func newCertsCommand(s Streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Generate serving certificates for the webhook and proxy",
	}
	cmd.AddCommand(newCertsGenerateCommand(s))
	return cmd
}

// certsOptions are the flags of certs generate.
type certsOptions struct {
	DNSNames   []string
	IPs        []string
	OutDir     string
	CACertFile string
	CAKeyFile  string
	WriteCAKey bool
	Validity   time.Duration
}

func (o *certsOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringSliceVar(&o.DNSNames, "dns", nil, "DNS name the serving certificate is valid for (repeatable), e.g. kubedefender.kubedefender-system.svc")
	f.StringSliceVar(&o.IPs, "ip", nil, "IP address the serving certificate is valid for (repeatable), e.g. 127.0.0.1")
	f.StringVar(&o.OutDir, "out-dir", "", "directory to write ca.crt, tls.crt and tls.key into (required)")
	f.StringVar(&o.CACertFile, "ca-cert", "", "sign with this existing CA certificate (with --ca-key) instead of a new CA: rotates the serving pair without changing the caBundle")
	f.StringVar(&o.CAKeyFile, "ca-key", "", "key of --ca-cert")
	f.BoolVar(&o.WriteCAKey, "write-ca-key", false, "also write the new CA's key as ca.key (0600), so a later --ca-cert/--ca-key run can rotate the pair; without it the CA key is discarded")
	f.DurationVar(&o.Validity, "validity", pki.DefaultServingValidity, "validity of the serving certificate")
}

// Validate reports every problem at once.
func (o *certsOptions) Validate() error {
	var errs []error
	if o.OutDir == "" {
		errs = append(errs, errors.New("--out-dir is required"))
	}
	if len(o.DNSNames) == 0 && len(o.IPs) == 0 {
		errs = append(errs, errors.New("give at least one --dns or --ip"))
	}
	for _, ip := range o.IPs {
		if net.ParseIP(ip) == nil {
			errs = append(errs, fmt.Errorf("--ip %q: not an IP address", ip))
		}
	}
	if (o.CACertFile == "") != (o.CAKeyFile == "") {
		errs = append(errs, errors.New("--ca-cert and --ca-key go together"))
	}
	if o.CACertFile != "" && o.WriteCAKey {
		errs = append(errs, errors.New("--write-ca-key only applies to a new CA, not to --ca-cert/--ca-key"))
	}
	if o.Validity <= 0 {
		errs = append(errs, errors.New("--validity must be greater than 0"))
	}
	return errors.Join(errs...)
}

func newCertsGenerateCommand(s Streams) *cobra.Command {
	o := &certsOptions{}
	cmd := &cobra.Command{
		Use:   "generate --dns NAME|--ip IP ... --out-dir DIR",
		Short: "Write a CA (ca.crt) and a serving pair it signed (tls.crt, tls.key) for the given names",
		Example: `  # for the webhook in a cluster, reached through its Service
  kubedefender certs generate --dns kubedefender.kubedefender-system.svc --out-dir ./certs
  # for a webhook on this machine
  kubedefender certs generate --ip 127.0.0.1 --dns localhost --out-dir ./certs --write-ca-key
  # rotate the serving pair, keeping the caBundle
  kubedefender certs generate --ip 127.0.0.1 --ca-cert certs/ca.crt --ca-key certs/ca.key --out-dir ./certs`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			var ips []net.IP
			for _, ip := range o.IPs {
				ips = append(ips, net.ParseIP(ip))
			}
			var ca *pki.CA
			var err error
			if o.CACertFile != "" {
				ca, err = pki.LoadCA(o.CACertFile, o.CAKeyFile)
			} else {
				ca, err = pki.NewCA(pki.CAOptions{})
			}
			if err != nil {
				return err
			}
			pair, err := ca.Issue(pki.ServingOptions{DNSNames: o.DNSNames, IPs: ips, Validity: o.Validity})
			if err != nil {
				return err
			}
			if err := pki.WriteFiles(o.OutDir, ca, pair, o.WriteCAKey); err != nil {
				return err
			}
			written := []string{pki.CACertFile, pki.CertFile, pki.KeyFile}
			if o.WriteCAKey {
				written = append(written, pki.CAKeyFile)
			}
			for _, f := range written {
				fmt.Fprintln(s.Out, filepath.Join(o.OutDir, f))
			}
			fmt.Fprintf(s.Err, "serving certificate for %v valid until %s; put %s into the webhook's caBundle (kubedefender webhook config --ca-bundle-file)\n",
				append(append([]string{}, o.DNSNames...), o.IPs...), pair.Cert.NotAfter.UTC().Format(time.RFC3339), filepath.Join(o.OutDir, pki.CACertFile))
			return nil
		},
	}
	o.AddFlags(cmd)
	return cmd
}
