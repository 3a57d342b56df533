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
// KubeDefender's own namespace). An operator can add it to a namespace in an
// emergency, which is recorded in the audit log like any other label change.
const ExemptLabel = "kubedefender.io/exempt"

// DefaultExcludedNamespaces returns the namespaces the namespaceSelector
// leaves out unless ConfigurationOptions.ExcludeNamespaces says otherwise:
// kube-system holds the cluster's own components, whose deletion and eviction
// are the cluster's self-repair (and must keep working while the webhook is
// down).
func DefaultExcludedNamespaces() []string { return []string{"kube-system"} }

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
	// DefaultExcludedNamespaces, an empty non-nil slice excludes only
	// OwnNamespace.
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
//   - CREATE or UPDATE on the named resources for budgets with those verbs.
//
// The namespaceSelector leaves out OwnNamespace, ExcludeNamespaces and every
// namespace labelled ExemptLabel=true. sideEffects is NoneOnDryRun (a dry run charges nothing), matchPolicy
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
		o.ExcludeNamespaces = DefaultExcludedNamespaces()
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
	selector := &metav1.LabelSelector{}
	if o.NamespaceSelector != nil {
		selector = o.NamespaceSelector.DeepCopy()
	}
	if len(excluded) > 0 {
		selector.MatchExpressions = append(selector.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: excluded,
		})
	}
	selector.MatchExpressions = append(selector.MatchExpressions, metav1.LabelSelectorRequirement{
		Key: ExemptLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"true"},
	})

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
		}},
	}
	return cfg, notes, nil
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
				switch v {
				case "delete":
					add(admissionregistrationv1.Delete, group, res)
				case "create":
					add(admissionregistrationv1.Create, group, res)
				case "update":
					add(admissionregistrationv1.Update, group, res)
				case "evict":
					if (group == "" || group == "*") && (res == "pods" || res == "*") {
						add(admissionregistrationv1.Create, "", "pods/eviction")
					}
				}
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
			// "*" covers every resource of the group (not subresources, except
			// the pods/eviction rule, which is kept).
			kept := []string{"*"}
			for _, r := range res {
				if strings.Contains(r, "/") {
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
