package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubedefender/kubedefender/cmd/kubedefender/app"
	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/policy"
)

// TestWebhookConfigurationExemptions checks against a real kube-apiserver
// that the generated webhook configuration keeps exempt requests away from
// the webhook: Leases and Events under a wildcard budget (matchConditions),
// and the exempt namespace label only where spec.exemptions allow it (two
// disjoint webhooks, so nothing is judged twice).
func TestWebhookConfigurationExemptions(t *testing.T) {
	cp := framework.Start(t, framework.Options{})
	runScenarios(t, cp, []namedScenario{
		{"a wildcard budget never sees Leases or Events", wildcardLeasesScenario},
		{"the exempt label is honoured only in the namespaces the policy lists", labelListScenario},
		{"policy validate --kubeconfig checks resources against the cluster's discovery", validateDiscoveryScenario},
	})
}

// seenBy runs op and returns how many AdmissionReviews d received meanwhile.
func seenBy(t *testing.T, d *defender, what string, op func(ctx context.Context) error) int64 {
	t.Helper()
	before := d.Seen.Load()
	if err := op(context.Background()); err != nil {
		t.Fatalf("failed to %s: %v", what, err)
	}
	return d.Seen.Load() - before
}

func wildcardLeasesScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a budget on every create, update and delete of every resource
	const scenario, ns = "wildcard", "wildcard"
	d := startDefender(t, scenario, `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: wildcard}
spec:
  budgets:
  - name: everything
    match: {verbs: [create, update, delete], resources: ["*"]}
    windows: [{window: 1m, limit: 100000}]
`, defenderOptions{})
	d.register(t, cp, scenario, admissionregistrationv1.Ignore)
	createNamespace(t, cp, ns, scenario)
	c := cp.Client

	// When Leases and Events are created, updated and deleted
	leases := c.CoordinationV1().Leases(ns)
	holder := "me"
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "leader"}, Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder}}
	var got int64
	got += seenBy(t, d, "create a lease", func(ctx context.Context) error {
		_, err := leases.Create(ctx, lease, metav1.CreateOptions{})
		return err
	})
	got += seenBy(t, d, "update a lease", func(ctx context.Context) error {
		_, err := leases.Patch(ctx, "leader", types.MergePatchType, []byte(`{"spec":{"holderIdentity":"you"}}`), metav1.PatchOptions{})
		return err
	})
	got += seenBy(t, d, "delete a lease", func(ctx context.Context) error { return leases.Delete(ctx, "leader", metav1.DeleteOptions{}) })
	event := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "e1"}, InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "x"},
		Reason: "Test", Message: "test", Type: corev1.EventTypeNormal}
	got += seenBy(t, d, "create an event", func(ctx context.Context) error {
		_, err := c.CoreV1().Events(ns).Create(ctx, event, metav1.CreateOptions{})
		return err
	})
	got += seenBy(t, d, "delete an event", func(ctx context.Context) error {
		return c.CoreV1().Events(ns).Delete(ctx, "e1", metav1.DeleteOptions{})
	})

	// Then the webhook saw none of them
	if got != 0 {
		t.Errorf("the webhook received %d reviews for Leases and Events, want 0", got)
	}
	// And it still sees everything else
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"}}
	if n := seenBy(t, d, "create a configmap", func(ctx context.Context) error {
		_, err := c.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
		return err
	}); n != 1 {
		t.Errorf("the webhook received %d reviews for a configmap create, want 1", n)
	}
}

func labelListScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a pod budget whose policy lets only exlist-a and exlist-b carry the exempt label
	const scenario = "exlist"
	d := startDefender(t, scenario, budgetPolicy("exlist", "  exemptions: {namespaces: [exlist-a, exlist-b]}\n", 100000, "1m"), defenderOptions{})
	d.register(t, cp, scenario, admissionregistrationv1.Ignore)
	label := func(ns string) {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:"true"}}}`, policy.ExemptNamespaceLabel)
		if _, err := cp.Client.CoreV1().Namespaces().Patch(context.Background(), ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatalf("failed to label %s: %v", ns, err)
		}
	}
	// kube-apiserver calls a webhook up to three times for one pod delete,
	// so each namespace is compared with one that only the first webhook
	// judges (exlist-d): the same count means judged by one webhook, not two.
	cases := []struct {
		ns       string
		labelled bool
		judged   bool
	}{
		{"exlist-d", false, true}, // neither listed nor labelled: the baseline
		{"exlist-a", true, false}, // listed and labelled: exempt
		{"exlist-b", false, true}, // listed, not labelled: the second webhook
		{"exlist-c", true, true},  // labelled but not listed: the label is ignored
	}
	for _, tc := range cases {
		createNamespace(t, cp, tc.ns, scenario)
		if tc.labelled {
			label(tc.ns)
		}
		createPods(t, cp.Client, tc.ns, "p", 1)
	}
	// The API server reads namespace labels from its informer: wait until
	// the labelled, listed namespace is skipped before measuring.
	framework.Eventually(t, 30*time.Second, "the API server to see the exempt label on exlist-a", func(ctx context.Context) (bool, error) {
		before := d.Seen.Load()
		err := cp.Client.CoreV1().Pods("exlist-a").Delete(ctx, "p-0", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		return d.Seen.Load() == before, err
	})
	var baseline int64
	for _, tc := range cases {
		// When a pod there is deleted
		n := seenBy(t, d, "delete a pod in "+tc.ns, func(ctx context.Context) error { return deletePod(ctx, cp.Client, tc.ns, "p-0") })
		if tc.ns == "exlist-d" {
			if baseline = n; n == 0 {
				t.Fatalf("a pod delete in exlist-d never reached the webhook")
			}
			continue
		}
		// Then the webhook judges it as often as with one webhook, or never.
		// One webhook sees a pod delete up to three times (the API server
		// validates it again as the deletion proceeds; how often depends on
		// timing, 2 or 3 here), so two webhooks both matching would show at
		// least 4.
		limit := max(baseline, 3)
		switch {
		case !tc.judged && n != 0:
			t.Errorf("deleting a pod in %s (labelled %v) reached the webhook %d times, want 0", tc.ns, tc.labelled, n)
		case tc.judged && (n < 1 || n > limit):
			t.Errorf("deleting a pod in %s (labelled %v) reached the webhook %d times, want 1 to %d as with one webhook (exlist-d: %d)", tc.ns, tc.labelled, n, limit, baseline)
		}
	}
}

func validateDiscoveryScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a policy naming a standard resource and a group the cluster does
	// not serve (a CRD not installed yet)
	file := filepath.Join(t.TempDir(), "p.yaml")
	doc := `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: discovery}
spec:
  budgets:
  - name: b
    match: {verbs: [delete], resources: [apps/deployments, widgets.example.com/widgets]}
    windows: [{window: 1m, limit: 10}]
`
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	// When it is validated against the real API server's discovery
	var out, errOut bytes.Buffer
	code := app.Main([]string{"policy", "validate", "-o", "json", "--kubeconfig", cp.TokenKubeconfig(t, "admin"), file}, strings.NewReader(""), &out, &errOut)
	// Then it is valid, with a warning for the group the cluster does not serve
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, out.String(), errOut.String())
	}
	var rep app.ValidateReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	if len(rep.Files) != 1 || len(rep.Files[0].Warnings) != 1 ||
		!strings.Contains(rep.Files[0].Warnings[0].Message, `the cluster serves no API group "widgets.example.com"`) {
		t.Errorf("report = %s, want one warning about widgets.example.com", out.String())
	}
}
