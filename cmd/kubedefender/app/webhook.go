package app

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/webhook"
)

func newWebhookCommand(s Streams) *cobra.Command {
	return newGroupCommand("webhook", "Print or apply the ValidatingWebhookConfiguration", newWebhookConfigCommand(s))
}

// webhookConfigOptions are the flags of webhook config.
type webhookConfigOptions struct {
	PolicyFile        string
	URL               string
	Service           string
	ServiceNamespace  string
	ServiceName       string
	ServicePort       int32
	ServicePath       string
	CABundleFile      string
	Name              string
	WebhookName       string
	FailurePolicy     string
	TimeoutSeconds    int32
	OwnNamespace      string
	ExcludeNamespaces []string
	NamespaceSelector string
	Output            string
	Apply             bool
	Kubeconfig        string
}

func (o *webhookConfigOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.PolicyFile, "policy", "", "policy file whose budgets decide the webhook's rules (required)")
	f.StringVar(&o.URL, "url", "", "webhook URL, e.g. https://127.0.0.1:8443/validate (or use --service-*); without a path, "+webhook.Path+" is appended")
	f.StringVar(&o.Service, "service", "", "NAMESPACE/NAME of the Service in front of the webhook (shorthand for --service-namespace and --service-name)")
	f.StringVar(&o.ServiceNamespace, "service-namespace", "", "namespace of the Service in front of the webhook")
	f.StringVar(&o.ServiceName, "service-name", "", "name of the Service in front of the webhook")
	f.Int32Var(&o.ServicePort, "service-port", 443, "port of the Service")
	f.StringVar(&o.ServicePath, "service-path", webhook.Path, "path of the webhook behind the Service")
	f.StringVar(&o.CABundleFile, "ca-bundle-file", "", "PEM CA certificate(s) that signed the webhook's serving certificate (e.g. ca.crt from kubedefender certs generate; a key or anything else is refused); empty leaves caBundle out, for cert-manager's CA injector to fill")
	f.StringVar(&o.Name, "name", webhook.DefaultConfigurationName, "name of the ValidatingWebhookConfiguration")
	f.StringVar(&o.WebhookName, "webhook-name", webhook.DefaultWebhookName, "name of the webhook inside it")
	f.StringVar(&o.FailurePolicy, "failure-policy", string(webhook.DefaultFailurePolicy),
		"what the API server does when the webhook cannot answer: Ignore admits the request (default: a dead guard must not stall rollouts, drains and garbage collection), Fail denies it (run several replicas and alert on them)")
	f.Int32Var(&o.TimeoutSeconds, "timeout-seconds", webhook.DefaultTimeoutSeconds, "how long the API server waits for the webhook (1-30)")
	f.StringVar(&o.OwnNamespace, "own-namespace", "", "namespace KubeDefender runs in, always left out (default: the policy's breakGlass.namespace)")
	f.StringSliceVar(&o.ExcludeNamespaces, "exclude-namespaces", nil, "namespaces the webhook is never called for (default: the policy's spec.exemptions.excludeNamespaces, itself kube-system when unset; the proxy skips the same ones, so prefer setting them in the policy); pass --exclude-namespaces= to exclude none")
	f.StringVar(&o.NamespaceSelector, "namespace-selector", "", "label selector namespaces must also match, e.g. kubedefender.io/protect=true (opt-in)")
	f.StringVarP(&o.Output, "output", "o", "yaml", "output format: yaml or json")
	f.BoolVar(&o.Apply, "apply", false, "apply the configuration to the cluster (server-side apply) instead of only printing it")
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig for --apply (default: $KUBECONFIG or ~/.kube/config)")
}

// Validate reports every problem at once. It touches nothing.
func (o *webhookConfigOptions) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.Service != "" {
		ns, name, ok := strings.Cut(o.Service, "/")
		switch {
		case !ok || ns == "" || name == "" || strings.Contains(name, "/"):
			add("--service %q: want NAMESPACE/NAME", o.Service)
		case o.ServiceNamespace != "" || o.ServiceName != "":
			add("--service and --service-namespace/--service-name exclude each other")
		}
	}
	if o.PolicyFile == "" {
		add("--policy is required")
	}
	svc := o.ServiceNamespace != "" || o.ServiceName != "" || o.Service != ""
	switch {
	case o.URL == "" && !svc:
		add("give --url or --service NAMESPACE/NAME")
	case o.URL != "" && svc:
		add("--url and --service-* exclude each other")
	case o.Service == "" && svc && (o.ServiceNamespace == "" || o.ServiceName == ""):
		add("--service-namespace and --service-name go together")
	}
	if o.URL != "" {
		if _, _, err := webhookURL(o.URL); err != nil {
			add("%w", err)
		}
	}
	if o.FailurePolicy != string(admissionregistrationv1.Ignore) && o.FailurePolicy != string(admissionregistrationv1.Fail) {
		add("--failure-policy %q: want Ignore or Fail", o.FailurePolicy)
	}
	if o.TimeoutSeconds < 1 || o.TimeoutSeconds > 30 {
		add("--timeout-seconds %d: want 1 to 30", o.TimeoutSeconds)
	}
	if o.NamespaceSelector != "" {
		if _, err := metav1.ParseToLabelSelector(o.NamespaceSelector); err != nil {
			add("--namespace-selector %q: %v", o.NamespaceSelector, err)
		}
	}
	if o.Output != "yaml" && o.Output != "json" {
		add("--output %q: want yaml or json", o.Output)
	}
	if o.CABundleFile != "" {
		if _, err := readCABundle(o.CABundleFile); err != nil {
			add("%w", err)
		}
	}
	return errors.Join(errs...)
}

// Complete turns the options into configuration options and the policy.
func (o *webhookConfigOptions) Complete() (*policy.Compiled, webhook.ConfigurationOptions, error) {
	p, err := policy.Load(o.PolicyFile)
	if err != nil {
		return nil, webhook.ConfigurationOptions{}, err
	}
	u := ""
	if o.URL != "" {
		if u, _, err = webhookURL(o.URL); err != nil {
			return nil, webhook.ConfigurationOptions{}, err
		}
	}
	co := webhook.ConfigurationOptions{
		Name: o.Name, WebhookName: o.WebhookName, URL: u,
		FailurePolicy:     admissionregistrationv1.FailurePolicyType(o.FailurePolicy),
		TimeoutSeconds:    o.TimeoutSeconds,
		OwnNamespace:      o.OwnNamespace,
		ExcludeNamespaces: o.ExcludeNamespaces, // nil: the policy's
	}
	svcNS, svcName := o.ServiceNamespace, o.ServiceName
	if o.Service != "" {
		svcNS, svcName, _ = strings.Cut(o.Service, "/")
	}
	if svcName != "" {
		path, port := o.ServicePath, o.ServicePort
		co.Service = &admissionregistrationv1.ServiceReference{Namespace: svcNS, Name: svcName, Path: &path, Port: &port}
	}
	if o.CABundleFile != "" {
		if co.CABundle, err = readCABundle(o.CABundleFile); err != nil {
			return nil, co, err
		}
	}
	if o.NamespaceSelector != "" {
		if co.NamespaceSelector, err = metav1.ParseToLabelSelector(o.NamespaceSelector); err != nil {
			return nil, co, fmt.Errorf("failed to parse --namespace-selector: %w", err)
		}
	}
	return p, co, nil
}

func newWebhookConfigCommand(s Streams) *cobra.Command {
	o := &webhookConfigOptions{}
	cmd := &cobra.Command{
		Use:   "config --policy FILE (--url URL | --service NAMESPACE/NAME) [--ca-bundle-file F] [--apply]",
		Short: "Print (or apply) the ValidatingWebhookConfiguration that sends the policy's budgeted requests to the webhook",
		Example: `  kubedefender webhook config --policy policy.yaml --service kubedefender-system/kubedefender \
      --ca-bundle-file certs/ca.crt > webhook.yaml
  kubedefender webhook config --policy policy.yaml --url https://127.0.0.1:8443/validate \
      --ca-bundle-file certs/ca.crt --failure-policy Fail --apply --kubeconfig admin.kubeconfig`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			p, co, err := o.Complete()
			if err != nil {
				return err
			}
			cfg, notes, err := webhook.BuildConfiguration(p, co)
			for _, n := range notes {
				fmt.Fprintln(s.Err, "note:", n)
			}
			if err != nil {
				return err
			}
			if u, appended, _ := webhookURL(o.URL); appended {
				fmt.Fprintf(s.Err, "note: --url %q has no path: using %s (the webhook serves %s)\n", o.URL, u, webhook.Path)
			}
			if co.CABundle == nil {
				fmt.Fprintln(s.Err, "note: no --ca-bundle-file: caBundle is left out (the API server will not trust the webhook until something, e.g. cert-manager's CA injector, fills it)")
			}
			if o.Apply {
				return applyWebhookConfig(cmd.Context(), s, o.Kubeconfig, cfg)
			}
			var out []byte
			if o.Output == "json" {
				out, err = json.MarshalIndent(cfg, "", "  ")
				out = append(out, '\n')
			} else {
				out, err = yaml.Marshal(cfg)
			}
			if err != nil {
				return fmt.Errorf("failed to encode the configuration: %w", err)
			}
			_, err = s.Out.Write(out)
			return err
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func applyWebhookConfig(ctx context.Context, s Streams, kubeconfig string, cfg *admissionregistrationv1.ValidatingWebhookConfiguration) error {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return fmt.Errorf("failed to load kubeconfig: %w", err)
	}
	rc.UserAgent = "kubedefender-webhook-config"
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("failed to build a client: %w", err)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := webhook.ApplyConfiguration(ctx, c, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.Out, "validatingwebhookconfiguration.admissionregistration.k8s.io/%s applied (failurePolicy %s, %d rules)\n",
		out.Name, *out.Webhooks[0].FailurePolicy, len(out.Webhooks[0].Rules))
	return nil
}

// webhookURL checks a --url the way the API server will and completes it: an
// https URL with a host, no user info, query or fragment. A URL without a path
// (or with "/" alone) gets webhook.Path appended, since the webhook serves
// nothing else; appended says so.
func webhookURL(raw string) (u string, appended bool, err error) {
	p, err := url.Parse(raw)
	switch {
	case err != nil || p.Scheme != "https" || p.Host == "" || p.Opaque != "":
		return "", false, fmt.Errorf("--url %q: want https://host[:port]/path", raw)
	case p.User != nil:
		return "", false, fmt.Errorf("--url %q: user info is not allowed (the API server refuses it)", p.Redacted())
	case p.RawQuery != "" || p.ForceQuery || p.Fragment != "":
		return "", false, fmt.Errorf("--url %q: a query or fragment is not allowed (the API server refuses it)", raw)
	}
	if p.Path == "" || p.Path == "/" {
		p.Path = webhook.Path
		return p.String(), true, nil
	}
	return raw, false, nil
}

// readCABundle reads a caBundle file and accepts only what belongs in one:
// one or more PEM CERTIFICATE blocks, each a CA certificate that has not
// expired (text between blocks is ignored, as the API server ignores it). A private key is refused first and loudly: the configuration is
// readable cluster-wide, so a serving key that lands in it is published.
func readCABundle(file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("failed to read --ca-bundle-file: %w", err)
	}
	var certs int
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if strings.Contains(b.Type, "PRIVATE KEY") {
			return nil, fmt.Errorf("--ca-bundle-file %s holds a private key (%s): give the CA certificate (ca.crt), never a key; the webhook configuration is readable cluster-wide", file, b.Type)
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("--ca-bundle-file %s holds a PEM %s block: want only CA certificates (CERTIFICATE)", file, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("--ca-bundle-file %s: certificate %d does not parse: %w", file, certs+1, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("--ca-bundle-file %s: certificate %d (%s) is not a CA certificate: give the CA that signed the serving certificate (ca.crt), not the serving certificate", file, certs+1, c.Subject.CommonName)
		}
		if time.Now().After(c.NotAfter) {
			return nil, fmt.Errorf("--ca-bundle-file %s: CA certificate %d (%s) expired at %s", file, certs+1, c.Subject.CommonName, c.NotAfter.UTC().Format(time.RFC3339))
		}
		certs++
	}
	if certs == 0 {
		return nil, fmt.Errorf("--ca-bundle-file %s holds no PEM certificate: want the PEM CA certificate (ca.crt)", file)
	}
	return data, nil
}
