package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/kubedefender/kubedefender/policy"
)

// Defaults of ConfigurationOptions.
const (
	DefaultConfigurationName = "kubedefender"
	DefaultWebhookName       = "budgets.kubedefender.io"
	// DefaultFailurePolicy is Ignore: when the webhook cannot be reached the
	// API server admits the request. A guard that fails closed blocks every
	// budgeted delete — rollouts (a ReplicaSet scaling down deletes pods),
	// node drains, garbage collection, namespace cleanup — for as long as it
	// is down, and its users' documented way out becomes "delete the webhook
	// configuration". Fail is one flag away for clusters that run several
	// replicas with a PodDisruptionBudget and alert on them.
	DefaultFailurePolicy = admissionregistrationv1.Ignore
	// DefaultTimeoutSeconds is how long the API server waits for an answer.
	// The webhook answers within its decision timeout (500ms); the rest is
	// for the network. Kept low because timeouts add up over a cascade.
	DefaultTimeoutSeconds = 5
)

// ExemptLabel on a namespace, with the value "true", keeps the API server from
// calling the webhook for anything in it (the deploy/ manifests put it on
// KubeDefender's own namespace), when the policy's spec.exemptions allow it
// (by default they do, on every namespace). An operator can add it to a
// namespace in an emergency, which is recorded in the audit log like any
// other label change; whoever may patch namespaces can, so it is as strong
// as break-glass.
const ExemptLabel = policy.ExemptNamespaceLabel

// LabelledWebhookPrefix prefixes the name of the second webhook that
// BuildConfiguration adds when spec.exemptions.namespaces restricts the
// exempt label to some namespaces.
const LabelledWebhookPrefix = "labelled."

// DefaultExcludedNamespaces returns the namespaces the namespaceSelector
// leaves out unless ConfigurationOptions.ExcludeNamespaces says otherwise:
// kube-system holds the cluster's own components, whose deletion and eviction
// are the cluster's self-repair (and must keep working while the webhook is
// down).
func DefaultExcludedNamespaces() []string { return policy.DefaultExcludedNamespaces() }

// ConfigurationOptions describe the ValidatingWebhookConfiguration.
type ConfigurationOptions struct {
	// Name of the configuration object; empty means DefaultConfigurationName.
	Name string
	// WebhookName is the webhook's name (a DNS name); empty means DefaultWebhookName.
	WebhookName string
	// URL of the webhook (https://host:port/validate), or Service: exactly one.
	URL     string
	Service *admissionregistrationv1.ServiceReference
	// CABundle is the PEM CA that signed the webhook's serving certificate.
	CABundle []byte
	// FailurePolicy; empty means DefaultFailurePolicy.
	FailurePolicy admissionregistrationv1.FailurePolicyType
	// TimeoutSeconds; zero means DefaultTimeoutSeconds.
	TimeoutSeconds int32
	// OwnNamespace is where KubeDefender runs; it is always excluded. Empty
	// means the policy's breakGlass.namespace.
	OwnNamespace string
	// ExcludeNamespaces are left out by the namespaceSelector; nil means
	// the policy's spec.exemptions.excludeNamespaces (itself
	// DefaultExcludedNamespaces when unset), an empty non-nil slice excludes
	// only OwnNamespace.
	ExcludeNamespaces []string
	// NamespaceSelector further narrows the namespaces (e.g. opt-in by
	// label); its requirements are ANDed with the exclusions.
	NamespaceSelector *metav1.LabelSelector
}

// BuildConfiguration returns the ValidatingWebhookConfiguration that sends the
// API server's requests matching p's budgets to the webhook:
//
//   - DELETE on every resource a budget with verb delete, deletecollection
//     or "*" names (the API server calls the webhook per item of a
//     deletecollection, so both verbs need the DELETE rule);
//   - CREATE on pods/eviction for a budget with verb evict (or "*") whose
//     resources include pods;
//   - CREATE or UPDATE on the named resources for budgets with those verbs,
//     and UPDATE on <resource>/scale for those that may have a scale
//     subresource (deployments, replicasets, statefulsets,
//     replicationcontrollers, custom resources, "*" as "*/scale"): the
//     webhook judges a scale update as an update of the resource.
//
// Leases (coordination.k8s.io) and Events (core and events.k8s.io) are never
// sent, since no budget ever charges them (policy.Exemption): explicit rules
// for them are dropped, and a rule that would cover them through a wildcard
// gets matchConditions that leave them out (honoured by Kubernetes 1.28 and
// later; older API servers ignore the field and the webhook exempts them
// itself).
//
// The namespaceSelector leaves out OwnNamespace, ExcludeNamespaces and, as
// the policy's spec.exemptions say, namespaces labelled ExemptLabel=true:
// every such namespace by default, none with namespaceLabel: false. When
// spec.exemptions.namespaces lists the namespaces allowed to carry the label,
// a label selector cannot say "not (labelled and listed)", so there are two
// webhooks with disjoint selectors: the first for every namespace not listed
// (label ignored), the second (LabelledWebhookPrefix) for the listed ones
// without the label, on namespaced resources and namespaces only, so that no
// request is sent to both. sideEffects is NoneOnDryRun (a dry run charges nothing), matchPolicy
// Equivalent (a request through another API version of a resource is judged
// too) and admissionReviewVersions [v1]. notes are hints for the operator
// (e.g. a budget that only the proxy can judge).
func BuildConfiguration(p *policy.Compiled, o ConfigurationOptions) (cfg *admissionregistrationv1.ValidatingWebhookConfiguration, notes []string, err error) {
	if (o.URL == "") == (o.Service == nil) {
		return nil, nil, errors.New("failed to build webhook configuration: give exactly one of a URL and a service")
	}
	if o.URL != "" {
		u, perr := url.Parse(o.URL)
		if perr != nil || u.Scheme != "https" || u.Host == "" {
			return nil, nil, fmt.Errorf("failed to build webhook configuration: url %q: want https://host[:port]/path", o.URL)
		}
	}
	if o.Name == "" {
		o.Name = DefaultConfigurationName
	}
	if o.WebhookName == "" {
		o.WebhookName = DefaultWebhookName
	}
	if o.FailurePolicy == "" {
		o.FailurePolicy = DefaultFailurePolicy
	}
	if o.FailurePolicy != admissionregistrationv1.Ignore && o.FailurePolicy != admissionregistrationv1.Fail {
		return nil, nil, fmt.Errorf("failed to build webhook configuration: failurePolicy %q: want Ignore or Fail", o.FailurePolicy)
	}
	if o.TimeoutSeconds == 0 {
		o.TimeoutSeconds = DefaultTimeoutSeconds
	}
	if o.TimeoutSeconds < 1 || o.TimeoutSeconds > 30 {
		return nil, nil, fmt.Errorf("failed to build webhook configuration: timeoutSeconds %d: want 1 to 30", o.TimeoutSeconds)
	}
	if o.OwnNamespace == "" {
		o.OwnNamespace = p.Policy.Spec.BreakGlass.Namespace
	}
	if o.ExcludeNamespaces == nil {
		o.ExcludeNamespaces = p.Policy.Spec.ExcludedNamespaces()
	}

	rules, notes := rulesFor(p)
	if len(rules) == 0 {
		return nil, notes, errors.New("failed to build webhook configuration: no budget of the policy needs the webhook (budgets on delete, deletecollection, evict, create or update)")
	}

	excluded := []string{}
	for _, ns := range append([]string{o.OwnNamespace}, o.ExcludeNamespaces...) {
		if ns != "" && !slices.Contains(excluded, ns) {
			excluded = append(excluded, ns)
		}
	}
	sort.Strings(excluded)
	spec := &p.Policy.Spec
	var labelled []string // namespaces where the label is honoured, when restricted
	for _, ns := range spec.LabelExemptNamespaces() {
		if !slices.Contains(excluded, ns) && !slices.Contains(labelled, ns) {
			labelled = append(labelled, ns)
		}
	}
	sort.Strings(labelled)
	restricted := spec.NamespaceLabelHonoured() && len(spec.LabelExemptNamespaces()) > 0
	newSelector := func() *metav1.LabelSelector {
		if o.NamespaceSelector != nil {
			return o.NamespaceSelector.DeepCopy()
		}
		return &metav1.LabelSelector{}
	}
	notExempt := metav1.LabelSelectorRequirement{Key: ExemptLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"true"}}
	selector := newSelector()
	leftOut := excluded
	if restricted {
		leftOut = append(slices.Clone(excluded), labelled...)
		sort.Strings(leftOut)
	}
	if len(leftOut) > 0 {
		selector.MatchExpressions = append(selector.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: leftOut,
		})
	}
	if spec.NamespaceLabelHonoured() && !restricted {
		selector.MatchExpressions = append(selector.MatchExpressions, notExempt)
	}

	sideEffects := admissionregistrationv1.SideEffectClassNoneOnDryRun
	matchPolicy := admissionregistrationv1.Equivalent
	cc := admissionregistrationv1.WebhookClientConfig{CABundle: o.CABundle}
	if o.URL != "" {
		cc.URL = &o.URL
	} else {
		svc := *o.Service
		if svc.Path == nil {
			path := Path
			svc.Path = &path
		}
		cc.Service = &svc
	}
	failurePolicy, timeout := o.FailurePolicy, o.TimeoutSeconds
	cfg = &admissionregistrationv1.ValidatingWebhookConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingWebhookConfiguration"},
		ObjectMeta: metav1.ObjectMeta{
			Name: o.Name,
			Labels: map[string]string{
				"app.kubernetes.io/name":       "kubedefender",
				"app.kubernetes.io/managed-by": "kubedefender",
			},
			Annotations: map[string]string{
				"kubedefender.io/policy":      p.Policy.Metadata.Name,
				"kubedefender.io/policy-hash": p.Hash,
			},
		},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    o.WebhookName,
			ClientConfig:            cc,
			Rules:                   rules,
			FailurePolicy:           &failurePolicy,
			MatchPolicy:             &matchPolicy,
			NamespaceSelector:       selector,
			ObjectSelector:          &metav1.LabelSelector{},
			SideEffects:             &sideEffects,
			TimeoutSeconds:          &timeout,
			AdmissionReviewVersions: []string{"v1"},
			MatchConditions:         exemptConditions(rules),
		}},
	}
	if restricted && len(labelled) > 0 {
		w := *cfg.Webhooks[0].DeepCopy()
		w.Name = LabelledWebhookPrefix + o.WebhookName
		w.Rules = namespacedRules(rules)
		w.MatchConditions = exemptConditions(w.Rules)
		sel := newSelector()
		sel.MatchExpressions = append(sel.MatchExpressions,
			metav1.LabelSelectorRequirement{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpIn, Values: labelled},
			notExempt)
		w.NamespaceSelector = sel
		cfg.Webhooks = append(cfg.Webhooks, w)
	}
	return cfg, notes, nil
}

// Match conditions that keep exempt resources away from the webhook.
var (
	notLeases = admissionregistrationv1.MatchCondition{
		Name:       "not-leases",
		Expression: "!(request.resource.group == 'coordination.k8s.io' && request.resource.resource == 'leases')",
	}
	notEvents = admissionregistrationv1.MatchCondition{
		Name:       "not-events",
		Expression: "!(request.resource.resource == 'events' && (request.resource.group == '' || request.resource.group == 'events.k8s.io'))",
	}
)

// exemptConditions returns the match conditions that leave Leases and Events
// out, for those the rules could cover through a wildcard.
func exemptConditions(rules []admissionregistrationv1.RuleWithOperations) []admissionregistrationv1.MatchCondition {
	var leases, events bool
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				leases = leases || ((g == "*" || g == "coordination.k8s.io") && (res == "*" || res == "leases"))
				events = events || ((g == "*" || g == "" || g == "events.k8s.io") && (res == "*" || res == "events"))
			}
		}
	}
	var out []admissionregistrationv1.MatchCondition
	if leases {
		out = append(out, notLeases)
	}
	if events {
		out = append(out, notEvents)
	}
	return out
}

// namespacedRules narrows rules to namespaced resources, plus the namespaces
// resource itself (cluster-scoped, but its namespaceSelector is matched
// against its own labels) where a rule covers it. Any other cluster-scoped
// object never skips a webhook by namespaceSelector, so the second webhook
// must not match it, or it would be judged twice.
func namespacedRules(rules []admissionregistrationv1.RuleWithOperations) []admissionregistrationv1.RuleWithOperations {
	namespaced, cluster := admissionregistrationv1.NamespacedScope, admissionregistrationv1.ClusterScope
	var out []admissionregistrationv1.RuleWithOperations
	for _, r := range rules {
		nr := *r.DeepCopy()
		nr.Scope = &namespaced
		out = append(out, nr)
		coversNamespaces := (slices.Contains(r.APIGroups, "") || slices.Contains(r.APIGroups, "*")) &&
			(slices.Contains(r.Resources, "*") || slices.Contains(r.Resources, "namespaces"))
		if coversNamespaces {
			out = append(out, admissionregistrationv1.RuleWithOperations{
				Operations: r.Operations,
				Rule: admissionregistrationv1.Rule{
					APIGroups: []string{""}, APIVersions: []string{"*"}, Resources: []string{"namespaces"}, Scope: &cluster,
				},
			})
		}
	}
	return out
}

// rulesFor derives the webhook rules from the policy's budgets: one rule per
// operation and API group, resources sorted, so the output is stable.
func rulesFor(p *policy.Compiled) ([]admissionregistrationv1.RuleWithOperations, []string) {
	type opGroup struct {
		op    admissionregistrationv1.OperationType
		group string
	}
	want := map[opGroup]map[string]bool{}
	add := func(op admissionregistrationv1.OperationType, group, resource string) {
		k := opGroup{op, group}
		if want[k] == nil {
			want[k] = map[string]bool{}
		}
		want[k][resource] = true
	}
	var notes []string
	for i := range p.Budgets {
		b := &p.Budgets[i]
		verbs := b.Budget.Match.Verbs
		if len(verbs) == 0 || slices.Contains(verbs, "*") {
			verbs = []string{"delete", "evict", "create", "update"}
		}
		resources := b.Budget.Match.Resources
		if len(resources) == 0 {
			resources = []string{"*"}
		}
		onlyCollection := slices.Contains(verbs, "deletecollection") && !slices.Contains(verbs, "delete")
		if onlyCollection {
			notes = append(notes, fmt.Sprintf("budget %q lists deletecollection without delete: the API server calls the webhook once per item as a delete, so the webhook charges it only for budgets with delete; the proxy judges deletecollection itself", b.Name))
		}
		for _, v := range verbs {
			for _, r := range resources {
				group, res := splitResource(r)
				if policy.IsLease(group, res) || policy.IsEvent(group, res) {
					continue // never charged (policy.Exemption): never sent
				}
				switch v {
				case "delete":
					add(admissionregistrationv1.Delete, group, res)
				case "create":
					add(admissionregistrationv1.Create, group, res)
				case "update":
					add(admissionregistrationv1.Update, group, res)
					if hasScale(group, res) {
						// kubectl scale and the HPA write <resource>/scale,
						// judged as an update of the resource (toAttributes).
						add(admissionregistrationv1.Update, group, res+"/scale")
					}
				case "evict":
					if (group == "" || group == "*") && (res == "pods" || res == "*") {
						add(admissionregistrationv1.Create, "", "pods/eviction")
					}
				}
			}
		}
	}
	if HasAtRoot(p) {
		// AtRoot budgets judge the roots of cascades (cascade roots): the
		// deletes of namespaces, nodes and workloads, the scale-downs of
		// workloads (and their scale) and the NoExecute taints of nodes.
		add(admissionregistrationv1.Delete, "", "namespaces")
		add(admissionregistrationv1.Delete, "", "nodes")
		add(admissionregistrationv1.Update, "", "nodes")
		for _, w := range cascadeWorkloads {
			add(admissionregistrationv1.Delete, w.group, w.resource)
			if w.scalable {
				add(admissionregistrationv1.Update, w.group, w.resource)
				add(admissionregistrationv1.Update, w.group, w.resource+"/scale")
			}
		}
	}
	keys := make([]opGroup, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	opOrder := map[admissionregistrationv1.OperationType]int{admissionregistrationv1.Delete: 0, admissionregistrationv1.Create: 1, admissionregistrationv1.Update: 2}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].op != keys[j].op {
			return opOrder[keys[i].op] < opOrder[keys[j].op]
		}
		return keys[i].group < keys[j].group
	})
	scope := admissionregistrationv1.AllScopes
	var rules []admissionregistrationv1.RuleWithOperations
	for _, k := range keys {
		res := make([]string, 0, len(want[k]))
		for r := range want[k] {
			res = append(res, r)
		}
		sort.Strings(res)
		if slices.Contains(res, "*") {
			// "*" covers every resource of the group (not subresources: the
			// pods/eviction and scale rules are kept, "*/scale" for all).
			kept := []string{"*"}
			for _, r := range res {
				if strings.Contains(r, "/") && !(strings.HasSuffix(r, "/scale") && r != "*/scale" && slices.Contains(res, "*/scale")) {
					kept = append(kept, r)
				}
			}
			res = kept
		}
		rules = append(rules, admissionregistrationv1.RuleWithOperations{
			Operations: []admissionregistrationv1.OperationType{k.op},
			Rule: admissionregistrationv1.Rule{
				APIGroups: []string{k.group}, APIVersions: []string{"*"}, Resources: res, Scope: &scope,
			},
		})
	}
	return rules, notes
}

// scalable are the built-in resources with a scale subresource, by group.
var scalable = map[string][]string{
	"":     {"replicationcontrollers"},
	"apps": {"deployments", "replicasets", "statefulsets"},
	// The old groups of the same workloads, reached through matchPolicy
	// Equivalent anyway, are listed for a policy that names them.
	"extensions": {"deployments", "replicasets", "replicationcontrollers"},
}

// hasScale says whether group/resource (either may be "*") may have a scale
// subresource: a built-in workload, a wildcard, or a resource of a group that
// is not built in (a custom resource may declare one; a rule naming a
// subresource that does not exist matches nothing).
func hasScale(group, resource string) bool {
	if resource == "*" {
		return true
	}
	if group == "*" {
		for _, rs := range scalable {
			if slices.Contains(rs, resource) {
				return true
			}
		}
		return false
	}
	if rs, ok := scalable[group]; ok {
		return slices.Contains(rs, resource)
	}
	return !builtinGroup(group)
}

// builtinGroup says whether group is one of Kubernetes' own API groups: the
// core group, an unqualified one (apps, batch, policy …) or one under k8s.io.
func builtinGroup(group string) bool {
	return !strings.Contains(group, ".") || group == "k8s.io" || strings.HasSuffix(group, ".k8s.io")
}

// splitResource reads a policy resource: "pods" (core), "apps/deployments",
// "apps/*", "*/deployments" or "*".
func splitResource(r string) (group, resource string) {
	if r == "*" {
		return "*", "*"
	}
	if g, res, ok := strings.Cut(r, "/"); ok {
		return g, res
	}
	return "", r
}

// ApplyConfiguration creates or updates cfg in the cluster with server-side
// apply, as field manager "kubedefender" (taking over fields another manager
// set: this command owns the object).
func ApplyConfiguration(ctx context.Context, c kubernetes.Interface, cfg *admissionregistrationv1.ValidatingWebhookConfiguration) (*admissionregistrationv1.ValidatingWebhookConfiguration, error) {
	data, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("failed to encode webhook configuration: %w", err)
	}
	force := true
	out, err := c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Patch(ctx, cfg.Name, types.ApplyPatchType, data,
		metav1.PatchOptions{FieldManager: "kubedefender", Force: &force})
	if err != nil {
		return nil, fmt.Errorf("failed to apply ValidatingWebhookConfiguration %s: %w", cfg.Name, err)
	}
	return out, nil
}
