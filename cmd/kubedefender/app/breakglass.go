package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubedefender/kubedefender/override"
	"github.com/kubedefender/kubedefender/policy"
)

// kubeOptions are the flags that reach a cluster with the caller's kubeconfig.
type kubeOptions struct {
	Kubeconfig string
	Context    string
	Namespace  string // where Overrides live
}

func (o *kubeOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.Context, "context", "", "kubeconfig context")
	// -n is kubectl's namespace flag: here it names where the Overrides live.
	// It is not grant's --namespace, which scopes an override to requests in
	// a namespace (kept for compatibility; see docs/cli.md, kubectl plugin).
	f.StringVarP(&o.Namespace, "override-namespace", "n", policy.DefaultBreakGlassNS,
		"namespace of the Override resources (the policy's breakGlass.namespace); not grant's --namespace scope")
}

func (o *kubeOptions) clients() (dynamic.Interface, kubernetes.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.Kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.Context}).ClientConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("failed to load kubeconfig: %w", err)
	}
	cfg.UserAgent = "kubedefender-breakglass"
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to build client: %w", err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to build client: %w", err)
	}
	return dyn, kube, nil
}

func newBreakglassCommand(s Streams) *cobra.Command {
	ko := &kubeOptions{}
	cmd := &cobra.Command{
		Use:   "breakglass",
		Short: "Grant, list and revoke break-glass overrides (with your kubeconfig; RBAC decides who may)",
		Long: `Break-glass overrides let matching requests bypass named budgets and rate limits until
they expire. They are Override resources in the policy's breakGlass.namespace: who may grant
one is ordinary RBAC (bind the ClusterRole kubedefender:breakglass), and every replica applies
them within seconds, logs them and records Events on them.`,
	}
	ko.AddFlags(cmd)
	cmd.AddCommand(newGrantCommand(s, ko), newListCommand(s, ko), newRevokeCommand(s, ko))
	return cmd
}

func newGrantCommand(s Streams, ko *kubeOptions) *cobra.Command {
	g := override.Grant{ResetBreaker: true}
	cmd := &cobra.Command{
		Use:   `grant --budget NAME [--namespace NS] [--user U] --for 30m --reason "INC-123: why"`,
		Short: "Create an override: matching requests bypass the named rules until it expires",
		Example: `  kubedefender breakglass grant --budget pod-deletes --namespace prod --for 30m --reason "INC-123: drain rack 7"
  kubedefender breakglass grant --rate-limit agent-lists --user system:node:n1 --for 10m --reason "INC-9: resync"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			g.Namespace = ko.Namespace
			if cmd.Flags().Changed("override-namespace") && len(g.Namespaces) == 0 && ko.Namespace != policy.DefaultBreakGlassNS {
				fmt.Fprintf(s.Err, "note: -n/--override-namespace %s is where the Override is stored (it must be the policy's breakGlass.namespace), "+
					"not its scope; use --namespace %s to bypass only requests in that namespace\n", ko.Namespace, ko.Namespace)
			}
			if cmd.Flags().Changed("requested-by") {
				return errors.New("--requested-by is gone: an Override records who created it, as the API server authenticates you " +
					"(checked at admission); name who asked for it in --reason")
			}
			if err := g.Validate(); err != nil {
				return err
			}
			dyn, kube, err := ko.clients()
			if err != nil {
				return err
			}
			o, err := override.Create(cmd.Context(), dyn, kube, g, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintf(s.Out, "override %s/%s granted to %s until %s (%s): %s, scope %s\n", o.Namespace, o.Name, o.Spec.RequestedBy,
				o.Spec.ExpiresAt.UTC().Format(time.RFC3339), g.For, o.Targets(), o.Scope())
			fmt.Fprintf(s.Out, "every replica applies it within 2s; revoke early with: %s breakglass revoke %s\n", cmd.Root().DisplayName(), o.Name)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&g.Budgets, "budget", nil, `budget to bypass (repeatable; "*" for all)`)
	f.StringSliceVar(&g.RateLimits, "rate-limit", nil, `rate limit to bypass (repeatable; "*" for all)`)
	f.StringSliceVar(&g.Namespaces, "namespace", nil, "only requests in this namespace (repeatable; default: any)")
	f.StringSliceVar(&g.Users, "user", nil, "only requests by this user (repeatable; default: any)")
	f.DurationVar(&g.For, "for", 0, "how long the override lasts (at most the policy's breakGlass.maxDuration)")
	f.StringVar(&g.Reason, "reason", "", "why: a ticket and a sentence (required)")
	f.BoolVar(&g.ResetBreaker, "reset-breaker", true, "close the targeted breakers and clear their counters when the override activates")
	f.String("requested-by", "", "gone: requestedBy is who you are authenticated as")
	_ = f.MarkHidden("requested-by")
	return cmd
}

// overrideRow is one line of `breakglass list`.
type overrideRow struct {
	Name        string    `json:"name"`
	Namespace   string    `json:"namespace"`
	State       string    `json:"state"`
	TimeLeft    string    `json:"timeLeft"`
	ExpiresAt   time.Time `json:"expiresAt"`
	Targets     string    `json:"targets"`
	Scope       string    `json:"scope"`
	RequestedBy string    `json:"requestedBy"`
	// RequestedByCheck says whether the API server checks requestedBy
	// against the authenticated creator (override.CreatorCheck).
	RequestedByCheck string `json:"requestedByCheck"`
	Reason           string `json:"reason"`
}

func newListCommand(s Streams, ko *kubeOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List overrides, active and expired, with the time left",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output must be table or json, not %q", output)
			}
			dyn, _, err := ko.clients()
			if err != nil {
				return err
			}
			os, err := override.List(cmd.Context(), dyn, ko.Namespace)
			if err != nil {
				return err
			}
			check, checkErr := override.CreatorCheck(cmd.Context(), dyn)
			now := time.Now()
			rows := make([]overrideRow, 0, len(os))
			for _, o := range os {
				r := overrideRow{Name: o.Name, Namespace: o.Namespace, ExpiresAt: o.Spec.ExpiresAt.UTC(), Targets: o.Targets(),
					Scope: o.Scope(), RequestedBy: o.Spec.RequestedBy, RequestedByCheck: check, Reason: o.Spec.Reason, State: override.PhaseActive, TimeLeft: "-"}
				if left := o.Spec.ExpiresAt.Sub(now); left > 0 {
					r.TimeLeft = left.Round(time.Second).String()
				} else {
					r.State = override.PhaseExpired
				}
				rows = append(rows, r)
			}
			if output == "json" {
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			if len(rows) == 0 {
				fmt.Fprintf(s.Out, "no overrides in %s\n", ko.Namespace)
				return nil
			}
			tw := tabwriter.NewWriter(s.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tTIME LEFT\tTARGETS\tSCOPE\tREQUESTED BY\tREASON")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.State, r.TimeLeft, r.Targets, r.Scope, r.RequestedBy, oneLine(r.Reason))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintln(s.Out, creatorFootnote(check, checkErr))
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

// creatorFootnote says under `breakglass list` what REQUESTED BY is worth.
func creatorFootnote(check string, err error) string {
	switch check {
	case override.CreatorVerified:
		return "REQUESTED BY is who created the override, as the API server authenticated them (ValidatingAdmissionPolicy " + override.CreatorPolicy + ")."
	case override.CreatorUnverified:
		return "warning: REQUESTED BY is NOT verified: ValidatingAdmissionPolicy " + override.CreatorPolicy +
			" is not installed (apply deploy/base/crd-override.yaml), so anyone who may create Overrides can write any name there."
	}
	return fmt.Sprintf("note: could not tell whether REQUESTED BY is verified (ValidatingAdmissionPolicy %s: %v).", override.CreatorPolicy, err)
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}

func newRevokeCommand(s Streams, ko *kubeOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME...",
		Short: "Delete overrides before they expire",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, names []string) error {
			dyn, _, err := ko.clients()
			if err != nil {
				return err
			}
			var errs []error
			for _, n := range names {
				if err := override.Revoke(cmd.Context(), dyn, ko.Namespace, n); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(s.Out, "override %s/%s revoked\n", ko.Namespace, n)
			}
			return errors.Join(errs...)
		},
	}
}
