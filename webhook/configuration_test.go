package webhook

import (
	"path/filepath"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/kubedefender/kubedefender/policy"
)

const configPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: production}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete, deletecollection, evict], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: 20}]
  - name: workload-deletes
    match: {verbs: [delete], resources: [apps/deployments, apps/statefulsets, namespaces]}
    windows: [{window: 5m, limit: 10}]
  - name: collection-only
    match: {verbs: [deletecollection], resources: [configmaps]}
    windows: [{window: 1m, limit: 10}]
  - name: deployment-updates
    mode: Shadow
    match: {verbs: [update], resources: [apps/deployments]}
    windows: [{window: 1m, limit: 100}]
`

func mustParse(t *testing.T, doc string) *policy.Compiled {
	t.Helper()
	p, err := policy.Parse("policy.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBuildConfigurationGolden pins the whole configuration for a policy in
// testdata/configuration.golden.yaml (rewrite with -update).
func TestBuildConfigurationGolden(t *testing.T) {
	port := int32(443)
	cfg, notes, err := BuildConfiguration(mustParse(t, configPolicy), ConfigurationOptions{
		Service:  &admissionregistrationv1.ServiceReference{Namespace: "kubedefender-system", Name: "kubedefender", Port: &port},
		CABundle: []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], `budget "collection-only" lists deletecollection without delete`) {
		t.Errorf("notes = %q, want one about collection-only", notes)
	}
	got, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, filepath.Join("testdata", "configuration.golden.yaml"), got)
}

func TestBuildConfiguration(t *testing.T) {
	budget := func(verbs, resources string) string {
		return `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: t}
spec:
  budgets:
  - name: b
    match: {verbs: [` + verbs + `], resources: [` + resources + `]}
    windows: [{window: 1m, limit: 1}]
`
	}
	rules := func(cfg *admissionregistrationv1.ValidatingWebhookConfiguration) string {
		var parts []string
		for _, r := range cfg.Webhooks[0].Rules {
			parts = append(parts, string(r.Operations[0])+" "+strings.Join(r.APIGroups, ",")+"/"+strings.Join(r.Resources, ","))
		}
		return strings.Join(parts, "; ")
	}
	url := "https://127.0.0.1:8443/validate"
	cases := []struct {
		name      string
		policy    string
		opts      ConfigurationOptions
		wantRules string
		check     func(t *testing.T, cfg *admissionregistrationv1.ValidatingWebhookConfiguration)
		wantErr   string
	}{
		{name: "delete on pods sends DELETE of pods", policy: budget("delete", "pods"), opts: ConfigurationOptions{URL: url},
			wantRules: "DELETE /pods"},
		{name: "evict sends CREATE of pods/eviction", policy: budget("evict", "pods"), opts: ConfigurationOptions{URL: url},
			wantRules: "CREATE /pods/eviction"},
		{name: "evict on a resource other than pods sends nothing for it", policy: budget("delete, evict", "apps/deployments"), opts: ConfigurationOptions{URL: url},
			wantRules: "DELETE apps/deployments"},
		{name: "every resource of every group is one wildcard rule", policy: budget("delete", `"*", pods`), opts: ConfigurationOptions{URL: url},
			wantRules: "DELETE /pods; DELETE */*"},
		{name: "the wildcard verb covers delete, evict, create and update", policy: budget(`"*"`, "pods"), opts: ConfigurationOptions{URL: url},
			wantRules: "DELETE /pods; CREATE /pods,pods/eviction; UPDATE /pods"},
		{name: "an update budget on deployments sends updates of deployments/scale too", policy: budget("update", "apps/deployments"), opts: ConfigurationOptions{URL: url},
			wantRules: "UPDATE apps/deployments,deployments/scale"},
		{name: "an update budget on each built-in workload with a scale subresource sends its scale updates",
			policy: budget("update", "apps/replicasets, apps/statefulsets, replicationcontrollers, apps/daemonsets"), opts: ConfigurationOptions{URL: url},
			wantRules: "UPDATE /replicationcontrollers,replicationcontrollers/scale; UPDATE apps/daemonsets,replicasets,replicasets/scale,statefulsets,statefulsets/scale"},
		{name: "an update budget on every resource sends updates of every scale subresource", policy: budget("update", `"*", apps/deployments`), opts: ConfigurationOptions{URL: url},
			wantRules: "UPDATE */*,*/scale; UPDATE apps/deployments,deployments/scale"},
		{name: "an update budget on every resource of a group sends that group's scale updates", policy: budget("update", `"apps/*"`), opts: ConfigurationOptions{URL: url},
			wantRules: "UPDATE apps/*,*/scale"},
		{name: "an update budget on a custom resource sends its scale updates, which it may declare", policy: budget("update", "example.com/widgets"), opts: ConfigurationOptions{URL: url},
			wantRules: "UPDATE example.com/widgets,widgets/scale"},
		{name: "an update budget on a built-in resource without scale sends no scale rule", policy: budget("update", "configmaps, networking.k8s.io/ingresses"), opts: ConfigurationOptions{URL: url},
			wantRules: "UPDATE /configmaps; UPDATE networking.k8s.io/ingresses"},
		{name: "a delete budget on deployments sends no scale rule", policy: budget("delete", "apps/deployments"), opts: ConfigurationOptions{URL: url},
			wantRules: "DELETE apps/deployments"},
		{name: "the defaults are Ignore, 5s, Equivalent, NoneOnDryRun, v1, and kube-system and the own namespace left out",
			policy: budget("delete", "pods"), opts: ConfigurationOptions{URL: url},
			check: func(t *testing.T, cfg *admissionregistrationv1.ValidatingWebhookConfiguration) {
				w := cfg.Webhooks[0]
				if *w.FailurePolicy != admissionregistrationv1.Ignore || *w.TimeoutSeconds != 5 || *w.MatchPolicy != admissionregistrationv1.Equivalent ||
					*w.SideEffects != admissionregistrationv1.SideEffectClassNoneOnDryRun || strings.Join(w.AdmissionReviewVersions, ",") != "v1" {
					t.Errorf("webhook %+v does not carry the defaults", w)
				}
				if got := w.NamespaceSelector.MatchExpressions[0].Values; strings.Join(got, ",") != "kube-system,kubedefender-system" {
					t.Errorf("excluded namespaces = %v", got)
				}
			}},
		{name: "an empty exclusion list protects kube-system too", policy: budget("delete", "pods"),
			opts: ConfigurationOptions{URL: url, ExcludeNamespaces: []string{}, NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"protect": "yes"}}},
			check: func(t *testing.T, cfg *admissionregistrationv1.ValidatingWebhookConfiguration) {
				sel := cfg.Webhooks[0].NamespaceSelector
				if sel.MatchLabels["protect"] != "yes" || strings.Join(sel.MatchExpressions[0].Values, ",") != "kubedefender-system" {
					t.Errorf("selector = %+v", sel)
				}
			}},
		{name: "a service reference gets the webhook path", policy: budget("delete", "pods"),
			opts: ConfigurationOptions{Service: &admissionregistrationv1.ServiceReference{Namespace: "kd", Name: "kd"}},
			check: func(t *testing.T, cfg *admissionregistrationv1.ValidatingWebhookConfiguration) {
				if p := cfg.Webhooks[0].ClientConfig.Service.Path; p == nil || *p != "/validate" {
					t.Errorf("path = %v", p)
				}
			}},
		{name: "a url and a service together are refused", policy: budget("delete", "pods"),
			opts:    ConfigurationOptions{URL: url, Service: &admissionregistrationv1.ServiceReference{}},
			wantErr: "exactly one of a URL and a service"},
		{name: "a plain http url is refused", policy: budget("delete", "pods"), opts: ConfigurationOptions{URL: "http://x/validate"},
			wantErr: "want https://"},
		{name: "an unknown failure policy is refused", policy: budget("delete", "pods"), opts: ConfigurationOptions{URL: url, FailurePolicy: "Maybe"},
			wantErr: `failurePolicy "Maybe"`},
		{name: "a timeout over 30s is refused", policy: budget("delete", "pods"), opts: ConfigurationOptions{URL: url, TimeoutSeconds: 31},
			wantErr: "timeoutSeconds 31"},
		{name: "a policy without webhook budgets is refused", policy: budget("get", "pods"), opts: ConfigurationOptions{URL: url},
			wantErr: "no budget of the policy needs the webhook"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := policy.Parse("p.yaml", []byte(tc.policy))
			if err != nil {
				if tc.wantErr != "" {
					return // the policy itself refuses it
				}
				t.Fatal(err)
			}
			cfg, _, err := BuildConfiguration(p, tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantRules != "" && rules(cfg) != tc.wantRules {
				t.Errorf("rules = %q, want %q", rules(cfg), tc.wantRules)
			}
			if tc.check != nil {
				tc.check(t, cfg)
			}
		})
	}
}

func TestBuildConfigurationNeverSendsExemptResourcesAndHonoursTheExemptionsOfThePolicy(t *testing.T) {
	doc := func(resources, exemptions string) string {
		return `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: t}
spec:
  budgets:
  - name: b
    match: {verbs: [delete], resources: [` + resources + `]}
    windows: [{window: 1m, limit: 1}]
` + exemptions
	}
	summary := func(w admissionregistrationv1.ValidatingWebhook) string {
		var parts []string
		for _, r := range w.Rules {
			parts = append(parts, string(r.Operations[0])+" "+strings.Join(r.APIGroups, ",")+"/"+strings.Join(r.Resources, ",")+" "+string(*r.Scope))
		}
		for _, c := range w.MatchConditions {
			parts = append(parts, "if "+c.Name)
		}
		for _, e := range w.NamespaceSelector.MatchExpressions {
			parts = append(parts, e.Key+" "+string(e.Operator)+" "+strings.Join(e.Values, ","))
		}
		return w.Name + ": " + strings.Join(parts, "; ")
	}
	cases := []struct {
		name   string
		policy string
		want   []string // one summary per webhook
	}{
		{
			name:   "a wildcard budget is sent everything but Leases and Events",
			policy: doc(`"*"`, ""),
			want:   []string{"budgets.kubedefender.io: DELETE */* *; if not-leases; if not-events; kubernetes.io/metadata.name NotIn kube-system,kubedefender-system; kubedefender.io/exempt NotIn true"},
		},
		{
			name:   "explicit Leases and Events among other resources are not sent",
			policy: doc(`secrets, coordination.k8s.io/leases, events`, ""),
			want:   []string{"budgets.kubedefender.io: DELETE /secrets *; kubernetes.io/metadata.name NotIn kube-system,kubedefender-system; kubedefender.io/exempt NotIn true"},
		},
		{
			name:   "excludeNamespaces replaces kube-system",
			policy: doc(`pods`, "  exemptions: {excludeNamespaces: [batch]}\n"),
			want:   []string{"budgets.kubedefender.io: DELETE /pods *; kubernetes.io/metadata.name NotIn batch,kubedefender-system; kubedefender.io/exempt NotIn true"},
		},
		{
			name:   "an empty excludeNamespaces leaves out only the own namespace",
			policy: doc(`pods`, "  exemptions: {excludeNamespaces: []}\n"),
			want:   []string{"budgets.kubedefender.io: DELETE /pods *; kubernetes.io/metadata.name NotIn kubedefender-system; kubedefender.io/exempt NotIn true"},
		},
		{
			name:   "namespaceLabel false ignores the exempt label",
			policy: doc(`pods`, "  exemptions: {namespaceLabel: false}\n"),
			want:   []string{"budgets.kubedefender.io: DELETE /pods *; kubernetes.io/metadata.name NotIn kube-system,kubedefender-system"},
		},
		{
			name:   "a namespace list honours the label only there, with a second webhook on namespaced resources and namespaces",
			policy: doc(`pods, namespaces`, "  exemptions: {namespaces: [team-b, team-a, kube-system]}\n"),
			want: []string{
				"budgets.kubedefender.io: DELETE /namespaces,pods *; kubernetes.io/metadata.name NotIn kube-system,kubedefender-system,team-a,team-b",
				"labelled.budgets.kubedefender.io: DELETE /namespaces,pods Namespaced; DELETE /namespaces Cluster; kubernetes.io/metadata.name In team-a,team-b; kubedefender.io/exempt NotIn true",
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _, err := BuildConfiguration(mustParse(t, tc.policy), ConfigurationOptions{URL: "https://127.0.0.1:8443/validate"})
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Webhooks) != len(tc.want) {
				t.Fatalf("%d webhooks, want %d", len(cfg.Webhooks), len(tc.want))
			}
			for i, w := range tc.want {
				if got := summary(cfg.Webhooks[i]); got != w {
					t.Errorf("webhook %d:\n got %s\nwant %s", i, got, w)
				}
			}
		})
	}
}

const atRootConfigPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: blast-radius}
spec:
  budgets:
  - name: pods-down
    match: {verbs: [delete, evict], resources: [pods]}
    per: [namespace]
    cascades: AtRoot
    windows: [{window: 1m, limit: 20}]
`

// TestBuildConfigurationAtRootGolden pins the rules an AtRoot budget adds:
// DELETE of namespaces and nodes, DELETE of the workloads, UPDATE of the
// scalable workloads and their scale, UPDATE of nodes
// (testdata/configuration-atroot.golden.yaml, rewrite with -update).
func TestBuildConfigurationAtRootGolden(t *testing.T) {
	cfg, _, err := BuildConfiguration(mustParse(t, atRootConfigPolicy), ConfigurationOptions{URL: "https://127.0.0.1:8443/validate"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := yaml.Marshal(cfg.Webhooks[0].Rules)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, filepath.Join("testdata", "configuration-atroot.golden.yaml"), got)
	// The same policy with PerObject sends only the pod deletes and evictions.
	perObject, _, err := BuildConfiguration(mustParse(t, strings.Replace(atRootConfigPolicy, "cascades: AtRoot", "cascades: PerObject", 1)), ConfigurationOptions{URL: "https://127.0.0.1:8443/validate"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(perObject.Webhooks[0].Rules); n != 2 {
		t.Errorf("a PerObject budget on pods has %d rules, want 2 (DELETE pods, CREATE pods/eviction)", n)
	}
}
