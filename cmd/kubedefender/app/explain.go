package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/webhook"
)

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
	Server     string
}

func (o *explainOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.PolicyFile, "policy", "", "policy file (required)")
	f.StringVar(&o.Verb, "verb", "", "verb: "+strings.Join(explainVerbs, ", ")+" (required; create on pods/eviction is evict)")
	f.StringVar(&o.Resource, "resource", "", `resource as "pods" or "apps/deployments", optionally with a subresource "pods/eviction", "apps/deployments/scale" (required)`)
	f.StringVar(&o.Namespace, "namespace", "", "namespace of the request (empty: cluster-scoped)")
	f.StringVar(&o.Name, "name", "", "object name")
	f.StringVar(&o.User, "user", "", "user name, e.g. system:serviceaccount:kube-system:generic-garbage-collector")
	f.StringSliceVar(&o.Groups, "group", nil, "group of the user (repeatable)")
	f.StringVar(&o.UserAgent, "user-agent", "", "User-Agent header")
	f.BoolVar(&o.DryRun, "dry-run", false, "judge the request as a server-side dry run")
	f.StringVarP(&o.Output, "output", "o", "text", "output format: text or json")
	f.StringVar(&o.Server, "server", "", "a replica's metrics address (http://host:9090): also judge against its live counters, breakers and overrides, read from /status (charges nothing)")
}

// explainVerbs are the verbs a request can have.
var explainVerbs = []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "evict", "proxy"}

func (o *explainOptions) Validate() error {
	var errs []error
	if o.PolicyFile == "" {
		errs = append(errs, errors.New("--policy is required"))
	}
	switch {
	case o.Verb == "":
		errs = append(errs, errors.New("--verb is required"))
	case !slices.Contains(explainVerbs, o.Verb):
		errs = append(errs, fmt.Errorf("--verb %q is not a verb: want one of %s", o.Verb, strings.Join(explainVerbs, ", ")))
	}
	if o.Resource == "" {
		errs = append(errs, errors.New("--resource is required"))
	} else if _, err := o.attributes(); err != nil {
		errs = append(errs, err)
	}
	if o.Output != "text" && o.Output != "json" {
		errs = append(errs, fmt.Errorf("--output must be text or json, not %q", o.Output))
	}
	return errors.Join(errs...)
}

// attributes turns the flags into request attributes. "x/y" is a core
// resource and its subresource when x is a core resource ("pods/eviction"),
// a group and a resource otherwise ("apps/deployments"); "g/r/s" is a group,
// resource and subresource. create on pods/eviction is the verb evict, as the
// webhook reads it. A resource that no standard group serves under that name
// is refused with what to write instead.
func (o *explainOptions) attributes() (policy.Attributes, error) {
	a := policy.Attributes{Verb: o.Verb, Namespace: o.Namespace, Name: o.Name, User: o.User, Groups: o.Groups, UserAgent: o.UserAgent, DryRun: o.DryRun}
	parts := strings.Split(o.Resource, "/")
	core := policy.BuiltinResources()
	switch {
	case len(parts) == 3:
		a.APIGroup, a.Resource, a.Subresource = parts[0], parts[1], parts[2]
	case len(parts) == 2 && core.Has("", parts[0]):
		a.Resource, a.Subresource = parts[0], parts[1]
	case len(parts) == 2:
		a.APIGroup, a.Resource = parts[0], parts[1]
	case len(parts) == 1:
		a.Resource = parts[0]
	default:
		return a, fmt.Errorf(`--resource %q: want "resource", "group/resource" or either with "/subresource"`, o.Resource)
	}
	if a.Resource == "" || a.Resource == "*" || a.APIGroup == "*" {
		return a, fmt.Errorf("--resource %q: name one resource (a request is about one; wildcards are for policies)", o.Resource)
	}
	if msg := policy.ResourceProblem(a.APIGroup, a.Resource); msg != "" {
		return a, fmt.Errorf("--resource %q: %s", o.Resource, msg)
	}
	if a.Verb == "create" && a.APIGroup == "" && a.Resource == "pods" && a.Subresource == "eviction" {
		a.Verb = "evict"
	}
	if a.Verb == "evict" && (a.APIGroup != "" || a.Resource != "pods") {
		return a, fmt.Errorf("--verb evict is a create on pods/eviction; --resource %q is not pods", o.Resource)
	}
	if a.Verb == "evict" {
		a.Subresource = "eviction"
	}
	return a, nil
}

// Explanation is what policy explain reports.
type Explanation struct {
	Policy string `json:"policy"`
	Hash   string `json:"hash"`
	// Request is the request as judged, in words.
	Request string `json:"request"`
	// Exempt says why no budget ever applies to this request (policy.Exemption,
	// the webhook's and the proxy's list), or is empty.
	Exempt        string         `json:"exempt,omitempty"`
	Budgets       []RuleMatch    `json:"budgets"`
	RateLimits    []RuleMatch    `json:"rateLimits"`
	FlowSchema    string         `json:"flowSchema,omitempty"`
	PriorityLevel string         `json:"priorityLevel,omitempty"`
	Decision      ExplainVerdict `json:"decision"`
	// Server is the verdict against a running replica's state (--server).
	Server *ServerVerdict `json:"server,omitempty"`
	// Notes say how the fronts see this request (e.g. a patch reaches the
	// webhook as an update).
	Notes []string `json:"notes,omitempty"`
}

// RuleMatch is one rule's verdict on whether it applies.
type RuleMatch struct {
	Name    string `json:"name"`
	Mode    string `json:"mode"`
	Applies bool   `json:"applies"`
	// Why is "matched", "excluded", "no match" or "exempt".
	Why string `json:"why"`
	// Reason says why in words: which condition failed, what excluded it.
	Reason string `json:"reason"`
	Key    string `json:"key,omitempty"`
	// Front is the enforcement point that judges the rule.
	Front string `json:"front"`
	// Windows ("1m: 20") and Breaker describe a budget; Rate a rate limit.
	Windows []string `json:"windows,omitempty"`
	Breaker string   `json:"breaker,omitempty"`
	Rate    string   `json:"rate,omitempty"`
	// Live is the state of the key on the server (--server).
	Live string `json:"live,omitempty"`
	// Cascade says how an AtRoot budget charges this request when it is a
	// root (what it removes, counted by the webhook from the cluster).
	Cascade string `json:"cascade,omitempty"`
}

// ExplainVerdict is the decision on an empty store.
type ExplainVerdict struct {
	Allowed  bool     `json:"allowed"`
	Code     int      `json:"code,omitempty"`
	Message  string   `json:"message,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// ServerVerdict is the decision against a running replica's live state.
type ServerVerdict struct {
	Server     string `json:"server"`
	PolicyHash string `json:"policyHash"`
	Allowed    bool   `json:"allowed"`
	// Certain is false when a key was not among those the replica reports.
	Certain bool   `json:"certain"`
	Message string `json:"message"`
}

func newPolicyExplainCommand(s Streams) *cobra.Command {
	o := &explainOptions{}
	cmd := &cobra.Command{
		Use:   "explain --policy FILE --verb V --resource R [--namespace N --user U --group G --user-agent UA] [--server URL]",
		Short: "Show which budgets, rate limits and flow schema match a request and why, and the decision on an empty store (or a running replica's)",
		Long: `explain judges one request with the engine's own code: the exemptions the webhook and the
proxy share, each rule's match and exclude (and which condition failed), the budget key
(User-Agent capped at 256 bytes as the engine does), each budget's windows and breaker and which
front enforces it, and the decision on an empty store. With --server it also reads a running
replica's /status (read-only: nothing is charged) and says whether that replica would admit the
request now.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			c, err := loadOnePolicy(o.PolicyFile)
			if err != nil {
				return err
			}
			a, _ := o.attributes()
			ex, err := explain(cmd.Context(), c, a)
			if err != nil {
				return err
			}
			if o.Server != "" {
				st, err := fetchStatus(cmd.Context(), &http.Client{Timeout: 5 * time.Second}, o.Server)
				if err != nil {
					return err
				}
				judgeLive(ex, c, a, o.Server, st, time.Now())
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

// loadOnePolicy loads the policy in file: a policy file, or a ConfigMap
// manifest holding exactly one.
func loadOnePolicy(file string) (*policy.Compiled, error) {
	data, err := readPolicyFile(file)
	if err != nil {
		return nil, err
	}
	docs, err := policy.Documents(file, data)
	if err != nil {
		return nil, err
	}
	if len(docs) != 1 {
		names := make([]string, 0, len(docs))
		for _, d := range docs {
			names = append(names, d.Name)
		}
		return nil, fmt.Errorf("failed to load policy: %s holds %d policies (%s): explain judges with one", file, len(docs), strings.Join(names, ", "))
	}
	return policy.Parse(docs[0].Name, docs[0].Data)
}

const (
	frontBudgets    = "webhook (or the proxy with --budgets-at=proxy)"
	frontRateLimits = "proxy"
)

// webhookView is the request as the webhook receives it, or why the webhook
// never judges it. The API server sends a patch as an update, and each item
// of a deletecollection as a delete.
func webhookView(a policy.Attributes) (wa policy.Attributes, unjudged string, notes []string) {
	wa = a
	switch a.Verb {
	case "patch":
		wa.Verb = "update"
		notes = append(notes, "the API server sends a patch to the webhook as an update: budgets judge it as update")
	case "deletecollection":
		wa.Verb = "delete"
		notes = append(notes, "the API server calls the webhook once per item of a deletecollection, as a delete: budgets judge each item like this")
	case "get", "list", "watch", "proxy":
		return wa, "the webhook never sees " + a.Verb + " (budgets are for writes; use a rate limit)", nil
	}
	if a.Subresource == "scale" && wa.Verb == "update" {
		notes = append(notes, "the webhook judges an update of "+a.Resource+"/scale as an update of "+a.Resource)
	} else if a.Subresource != "" && wa.Verb != "evict" && wa.Verb != "delete" {
		return wa, "the webhook does not judge writes to subresources (" + a.Resource + "/" + a.Subresource + ")", nil
	}
	return wa, "", notes
}

func explain(ctx context.Context, c *policy.Compiled, a policy.Attributes) (*Explanation, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ex := &Explanation{Policy: c.Policy.Metadata.Name, Hash: c.Hash, Budgets: []RuleMatch{}, RateLimits: []RuleMatch{}, Request: describeRequest(&a)}
	wa, unjudged, notes := webhookView(a)
	ex.Notes = notes
	spec := &c.Policy.Spec
	ex.Exempt = policy.Exemption(&wa, spec.BreakGlass.Namespace)
	if ex.Exempt == "" && spec.Excludes(a.Namespace) {
		ex.Exempt = fmt.Sprintf("namespace %s is in spec.exemptions.excludeNamespaces (kube-system when unset): the webhook configuration `webhook config` generates never sends its requests (one generated with --exclude-namespaces naming other namespaces, or written by hand, may: the webhook then judges them) and the proxy skips its budgets and breakers", a.Namespace)
	}
	if a.Namespace != "" && ex.Exempt == "" && spec.NamespaceLabelHonoured() {
		where := "this namespace"
		if ns := spec.LabelExemptNamespaces(); len(ns) > 0 && !slices.Contains(ns, a.Namespace) {
			where = ""
		}
		if where != "" {
			ex.Notes = append(ex.Notes, fmt.Sprintf("if namespace %s carries the label %s=true, the webhook is never called for it (spec.exemptions)", a.Namespace, policy.ExemptNamespaceLabel))
		}
	}
	for i := range c.Budgets {
		b := &c.Budgets[i]
		m := RuleMatch{Name: b.Name, Mode: string(b.Mode), Front: frontBudgets, Windows: windowsOf(b.Budget), Breaker: breakerOf(b.Budget)}
		switch {
		case ex.Exempt != "":
			m.Why, m.Reason = "exempt", "exempt: "+ex.Exempt
		case unjudged != "":
			m.Why, m.Reason = "no match", "no match: "+unjudged
		default:
			m.Applies, m.Reason = b.Explain(&wa, &b.Budget.Match, b.Budget.Exclude)
			m.Why, _, _ = strings.Cut(m.Reason, ":")
		}
		if m.Applies {
			m.Key = limiter.RuleKey(b.Per, &wa)
		}
		if b.Cascades == policy.CascadesAtRoot && ex.Exempt == "" && unjudged == "" {
			if root := webhook.CascadeRoot(wa.Verb, wa.APIGroup, wa.Resource, wa.Subresource); root != "" {
				m.Front = "webhook"
				m.Cascade = "AtRoot: this request is a root; the webhook charges it up front one token per object of this budget among " +
					root + ", counted from the cluster (not offline), and denies it whole if they do not fit"
			}
		}
		ex.Budgets = append(ex.Budgets, m)
	}
	for i := range c.RateLimits {
		r := &c.RateLimits[i]
		m := RuleMatch{Name: r.Name, Mode: string(r.Mode), Front: frontRateLimits, Rate: fmt.Sprintf("qps %g, burst %d", r.QPS, r.Burst)}
		m.Applies, m.Reason = r.Explain(&a, &r.RateLimit.Match, r.RateLimit.Exclude)
		m.Why, _, _ = strings.Cut(m.Reason, ":")
		if m.Applies {
			m.Key = limiter.RuleKey(r.Per, &a)
		}
		ex.RateLimits = append(ex.RateLimits, m)
	}
	if len(spec.PriorityLevels) > 0 {
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
	// The proxy judges rate limits first, then the webhook judges budgets:
	// the same order, the same engine, on an empty store.
	d := eng.Decide(ctx, &limiter.Attributes{Attributes: a, Front: limiter.FrontExplain, Checks: limiter.CheckRateLimits})
	if d.Allowed && ex.Exempt == "" && unjudged == "" {
		d = eng.Decide(ctx, &limiter.Attributes{Attributes: wa, Front: limiter.FrontExplain, Checks: limiter.CheckBudgets})
	}
	ex.Decision = ExplainVerdict{Allowed: d.Allowed, Code: d.Code, Message: d.Message, Warnings: d.Warnings}
	return ex, nil
}

func describeRequest(a *policy.Attributes) string {
	s := a.Verb + " " + policy.ResourceEntry(a.APIGroup, a.Resource, a.Subresource)
	if a.Name != "" {
		s += " " + a.Name
	}
	if a.Namespace != "" {
		s += " in namespace " + a.Namespace
	} else {
		s += " (cluster-scoped)"
	}
	if a.User != "" {
		s += " by " + a.User
	}
	if a.DryRun {
		s += " (dry run: judged, charges nothing)"
	}
	return s
}

func windowsOf(b *policy.Budget) []string {
	out := make([]string, 0, len(b.Windows))
	for _, w := range b.Windows {
		out = append(out, fmt.Sprintf("%s: %d", policy.FormatDuration(w.Window.Duration), w.Limit))
	}
	return out
}

func breakerOf(b *policy.Budget) string {
	switch {
	case b.Breaker == nil:
		return "none"
	case b.Breaker.Recovery == policy.RecoveryAuto:
		return fmt.Sprintf("Auto (cooldown %s, halfOpenLimit %d)", policy.FormatDuration(b.Breaker.Cooldown.Duration), b.Breaker.HalfOpenLimit)
	}
	return "Manual (stays open until a break-glass override resets it)"
}

func printExplanation(w io.Writer, ex *Explanation) {
	fmt.Fprintf(w, "policy %s (hash %s)\n", ex.Policy, ex.Hash)
	fmt.Fprintf(w, "request: %s\n", ex.Request)
	if ex.Exempt != "" {
		fmt.Fprintf(w, "exempt from every budget: %s\n", ex.Exempt)
	}
	for _, n := range ex.Notes {
		fmt.Fprintln(w, "note:", n)
	}
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
			line := fmt.Sprintf("  %s %-24s %-8s %s", mark, r.Name, r.Mode, r.Reason)
			if r.Key != "" {
				line += "  key " + r.Key
			}
			fmt.Fprintln(w, line)
			detail := "enforced by " + r.Front
			if len(r.Windows) > 0 {
				detail += "; windows " + strings.Join(r.Windows, ", ") + "; breaker " + r.Breaker
			}
			if r.Rate != "" {
				detail += "; " + r.Rate
			}
			fmt.Fprintln(w, "      "+detail)
			if r.Cascade != "" {
				fmt.Fprintln(w, "      "+r.Cascade)
			}
			if r.Live != "" {
				fmt.Fprintln(w, "      live: "+r.Live)
			}
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
	if ex.Server != nil {
		fmt.Fprintf(w, "decision on %s now (policy hash %s): %s\n", ex.Server.Server, ex.Server.PolicyHash, ex.Server.Message)
	}
}
