package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

func newPolicyCommand(s Streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Validate policies and explain how they judge a request",
	}
	cmd.AddCommand(newPolicyValidateCommand(s), newPolicyExplainCommand(s))
	return cmd
}

func newPolicyValidateCommand(s Streams) *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE...",
		Short: "Check policy files; exit 1 and print every error with its field path when one is bad",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, files []string) error {
			bad := 0
			for _, f := range files {
				c, err := policy.Load(f)
				if err != nil {
					bad++
					fmt.Fprintln(s.Err, err)
					continue
				}
				fmt.Fprintf(s.Out, "%s: valid (policy %q, hash %s: %d budgets, %d rate limits, %d priority levels, %d flow schemas)\n",
					f, c.Policy.Metadata.Name, c.Hash, len(c.Budgets), len(c.RateLimits), len(c.Policy.Spec.PriorityLevels), len(c.FlowSchemas))
			}
			if bad > 0 {
				return &ExitError{Code: 1, Err: fmt.Errorf("%d of %d policy files are invalid", bad, len(files))}
			}
			return nil
		},
	}
}

// explainOptions are the flags of policy explain.
type explainOptions struct {
	PolicyFile string
	Verb       string
	Resource   string
	Namespace  string
	Name       string
	User       string
	Groups     []string
	UserAgent  string
	DryRun     bool
	Output     string
}

func (o *explainOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.PolicyFile, "policy", "", "policy file (required)")
	f.StringVar(&o.Verb, "verb", "", "verb: get, list, watch, create, update, patch, delete, deletecollection, evict, proxy (required)")
	f.StringVar(&o.Resource, "resource", "", `resource as "pods" or "apps/deployments", optionally with a subresource "pods/log" (required)`)
	f.StringVar(&o.Namespace, "namespace", "", "namespace of the request (empty: cluster-scoped)")
	f.StringVar(&o.Name, "name", "", "object name")
	f.StringVar(&o.User, "user", "", "user name, e.g. system:serviceaccount:kube-system:generic-garbage-collector")
	f.StringSliceVar(&o.Groups, "group", nil, "group of the user (repeatable)")
	f.StringVar(&o.UserAgent, "user-agent", "", "User-Agent header")
	f.BoolVar(&o.DryRun, "dry-run", false, "judge the request as a server-side dry run")
	f.StringVarP(&o.Output, "output", "o", "text", "output format: text or json")
}

func (o *explainOptions) Validate() error {
	var errs []error
	if o.PolicyFile == "" {
		errs = append(errs, errors.New("--policy is required"))
	}
	if o.Verb == "" {
		errs = append(errs, errors.New("--verb is required"))
	}
	if o.Resource == "" {
		errs = append(errs, errors.New("--resource is required"))
	}
	if o.Output != "text" && o.Output != "json" {
		errs = append(errs, fmt.Errorf("--output must be text or json, not %q", o.Output))
	}
	return errors.Join(errs...)
}

// attributes turns the flags into request attributes. "apps/deployments",
// "pods/log" and "apps/deployments/scale" are told apart by whether the first
// part contains a dot or is a known group-less name.
func (o *explainOptions) attributes() policy.Attributes {
	a := policy.Attributes{Verb: o.Verb, Namespace: o.Namespace, Name: o.Name, User: o.User, Groups: o.Groups, UserAgent: o.UserAgent, DryRun: o.DryRun}
	parts := strings.Split(o.Resource, "/")
	switch {
	case len(parts) == 3:
		a.APIGroup, a.Resource, a.Subresource = parts[0], parts[1], parts[2]
	case len(parts) == 2 && (strings.Contains(parts[0], ".") || groupless[parts[0]]):
		a.APIGroup, a.Resource = parts[0], parts[1]
	case len(parts) == 2:
		a.Resource, a.Subresource = parts[0], parts[1]
	default:
		a.Resource = parts[0]
	}
	return a
}

// groupless are API groups whose names have no dot.
var groupless = map[string]bool{"apps": true, "batch": true, "policy": true, "autoscaling": true, "*": true}

// Explanation is what policy explain reports.
type Explanation struct {
	Policy        string         `json:"policy"`
	Hash          string         `json:"hash"`
	Budgets       []RuleMatch    `json:"budgets"`
	RateLimits    []RuleMatch    `json:"rateLimits"`
	FlowSchema    string         `json:"flowSchema,omitempty"`
	PriorityLevel string         `json:"priorityLevel,omitempty"`
	Decision      ExplainVerdict `json:"decision"`
}

// RuleMatch is one rule's verdict on whether it applies.
type RuleMatch struct {
	Name    string `json:"name"`
	Mode    string `json:"mode"`
	Applies bool   `json:"applies"`
	// Why is "matched", "excluded" or "no match".
	Why string `json:"why"`
	Key string `json:"key,omitempty"`
}

// ExplainVerdict is the decision on an empty store.
type ExplainVerdict struct {
	Allowed  bool     `json:"allowed"`
	Code     int      `json:"code,omitempty"`
	Message  string   `json:"message,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

func newPolicyExplainCommand(s Streams) *cobra.Command {
	o := &explainOptions{}
	cmd := &cobra.Command{
		Use:   "explain --policy FILE --verb V --resource R [--namespace N --user U --group G --user-agent UA]",
		Short: "Show which budgets, rate limits and flow schema match a request, and the decision on an empty store",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			c, err := policy.Load(o.PolicyFile)
			if err != nil {
				return err
			}
			ex, err := explain(cmd.Context(), c, o.attributes())
			if err != nil {
				return err
			}
			if o.Output == "json" {
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(ex)
			}
			printExplanation(s.Out, ex)
			return nil
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func explain(ctx context.Context, c *policy.Compiled, a policy.Attributes) (*Explanation, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ex := &Explanation{Policy: c.Policy.Metadata.Name, Hash: c.Hash, Budgets: []RuleMatch{}, RateLimits: []RuleMatch{}}
	verdict := func(r *policy.Rule) string {
		switch {
		case !r.Match.Matches(&a):
			return "no match"
		case !r.Exclude.Empty() && r.Exclude.Matches(&a):
			return "excluded"
		}
		return "matched"
	}
	for i := range c.Budgets {
		b := &c.Budgets[i]
		m := RuleMatch{Name: b.Name, Mode: string(b.Mode), Why: verdict(&b.Rule)}
		m.Applies = m.Why == "matched"
		if m.Applies {
			m.Key = ruleKey(b.Per, &a)
		}
		ex.Budgets = append(ex.Budgets, m)
	}
	for i := range c.RateLimits {
		r := &c.RateLimits[i]
		m := RuleMatch{Name: r.Name, Mode: string(r.Mode), Why: verdict(&r.Rule)}
		m.Applies = m.Why == "matched"
		if m.Applies {
			m.Key = ruleKey(r.Per, &a)
		}
		ex.RateLimits = append(ex.RateLimits, m)
	}
	if len(c.Policy.Spec.PriorityLevels) > 0 {
		if fs := c.FlowSchemaFor(&a); fs != nil {
			ex.FlowSchema, ex.PriorityLevel = fs.Name, fs.PriorityLevel
		} else {
			ex.FlowSchema, ex.PriorityLevel = "(none)", policy.CatchAll
		}
	}
	eng, err := limiter.NewEngine(limiter.EngineConfig{Policy: c})
	if err != nil {
		return nil, err
	}
	d := eng.Decide(ctx, &limiter.Attributes{Attributes: a, Front: limiter.FrontExplain})
	ex.Decision = ExplainVerdict{Allowed: d.Allowed, Code: d.Code, Message: d.Message, Warnings: d.Warnings}
	return ex, nil
}

func ruleKey(per []string, a *policy.Attributes) string {
	if len(per) == 0 {
		return "cluster-wide"
	}
	parts := make([]string, 0, len(per))
	for _, d := range per {
		v := ""
		switch d {
		case policy.PerNamespace:
			v = a.Namespace
		case policy.PerUser:
			v = a.User
		case policy.PerUserAgent:
			v = a.UserAgent
		}
		parts = append(parts, d+"="+v)
	}
	return strings.Join(parts, ",")
}

func printExplanation(w io.Writer, ex *Explanation) {
	fmt.Fprintf(w, "policy %s (hash %s)\n", ex.Policy, ex.Hash)
	section := func(title string, rules []RuleMatch) {
		fmt.Fprintf(w, "%s:\n", title)
		if len(rules) == 0 {
			fmt.Fprintln(w, "  (none in the policy)")
		}
		for _, r := range rules {
			mark := " "
			if r.Applies {
				mark = "✓"
			}
			line := fmt.Sprintf("  %s %-24s %-8s %s", mark, r.Name, r.Mode, r.Why)
			if r.Key != "" {
				line += "  key " + r.Key
			}
			fmt.Fprintln(w, line)
		}
	}
	section("budgets", ex.Budgets)
	section("rate limits", ex.RateLimits)
	if ex.PriorityLevel != "" {
		fmt.Fprintf(w, "flow schema: %s → priority level %s\n", ex.FlowSchema, ex.PriorityLevel)
	} else {
		fmt.Fprintln(w, "priority levels: none (queuing disabled)")
	}
	if ex.Decision.Allowed {
		fmt.Fprintln(w, "decision on an empty store: allowed")
	} else {
		fmt.Fprintf(w, "decision on an empty store: denied (%d): %s\n", ex.Decision.Code, ex.Decision.Message)
	}
	for _, warn := range ex.Decision.Warnings {
		fmt.Fprintln(w, "warning:", warn)
	}
}
