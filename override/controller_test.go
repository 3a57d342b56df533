package override

import (
	"context"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kubedefender/kubedefender/internal/testwait"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// fakeEngine is the engine side of the controller: a policy that a test
// reloads, and the overrides the controller hands over.
type fakeEngine struct {
	pol atomic.Pointer[policy.Compiled]
	// policyReads counts Policy calls: Run reads the policy at the top of
	// each of its rounds.
	policyReads atomic.Int64

	mu        sync.Mutex
	overrides []limiter.Override
}

func (e *fakeEngine) Policy() *policy.Compiled {
	e.policyReads.Add(1)
	return e.pol.Load()
}
func (e *fakeEngine) SetOverrides(o []limiter.Override) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.overrides = o
}
func (e *fakeEngine) ResetBreakers(context.Context, *limiter.Override) error { return nil }

// applied names the overrides in force as namespace/name, sorted.
func (e *fakeEngine) applied() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, o := range e.overrides {
		out = append(out, o.Namespace+"/"+o.Name)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func policyIn(t *testing.T, ns string) *policy.Compiled {
	t.Helper()
	p, err := policy.Parse("t.yaml", []byte(strings.Replace(testPolicy, "breakGlass: {maxDuration: 1h}", "breakGlass: {maxDuration: 1h, namespace: "+ns+"}", 1)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestControllerFollowsTheBreakGlassNamespaceOnReload: a reload that moved
// breakGlass.namespace moved the webhook's exemption but not the watch, so
// the old namespace's overrides kept applying and the new one's never did.
func TestControllerFollowsTheBreakGlassNamespaceOnReload(t *testing.T) {
	// Given overrides in bg-a, the policy's breakGlass.namespace, and in bg-b
	h := start(t, nil, newOverride(t, "bg-a", "in-a", nil), newOverride(t, "bg-b", "in-b", func(o *Override) { o.Spec.RequestedBy = "bob" }))
	testwait.Until(t, "the override of bg-a applies", func() bool { return h.eng.applied() == "bg-a/in-a" })

	// When a reload moves breakGlass.namespace to bg-b, then within a tick only bg-b's override applies
	h.eng.pol.Store(policyIn(t, "bg-b"))
	h.clk.Step(time.Second)
	testwait.Until(t, "after the reload only the override of bg-b applies", func() bool { return h.eng.applied() == "bg-b/in-b" })

	// and the override left behind is told why it stopped applying.
	ev := h.eventFor(t, "in-a", "Revoked")
	if want := "breakGlass.namespace is now bg-b"; !strings.Contains(ev.Message, want) {
		t.Errorf("Revoked message %q lacks %q", ev.Message, want)
	}

	// When a new override is created in the new namespace, then the moved watch sees it
	if _, err := h.dyn.Resource(GVR).Namespace("bg-b").Create(context.Background(), newOverride(t, "bg-b", "second", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the new override of bg-b applies", func() bool { return h.eng.applied() == "bg-b/in-b,bg-b/second" })
}

func admissionObject(kind string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
		"metadata": map[string]any{"name": CreatorPolicy}, "spec": spec,
	}}
}

// TestControllerSaysWhetherRequestedByIsVerified: the Activated Event and log
// line qualify requestedBy by whether the API server checks it.
func TestControllerSaysWhetherRequestedByIsVerified(t *testing.T) {
	cases := []struct {
		name      string
		admission []runtime.Object
		want      string
	}{
		{name: "with the shipped admission policy and its Deny binding", want: "requested by alice (authenticated at admission)",
			admission: []runtime.Object{
				admissionObject("ValidatingAdmissionPolicy", map[string]any{"failurePolicy": "Fail"}),
				admissionObject("ValidatingAdmissionPolicyBinding", map[string]any{"policyName": CreatorPolicy, "validationActions": []any{"Deny"}}),
			}},
		{name: "with a binding that only warns", want: "requested by alice (NOT verified",
			admission: []runtime.Object{
				admissionObject("ValidatingAdmissionPolicy", map[string]any{"failurePolicy": "Fail"}),
				admissionObject("ValidatingAdmissionPolicyBinding", map[string]any{"policyName": CreatorPolicy, "validationActions": []any{"Warn"}}),
			}},
		{name: "without the admission policy", want: "requested by alice (NOT verified"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Given the admission objects of the case
			h := start(t, nil, append([]runtime.Object{newOverride(t, "bg-a", "o", nil)}, tc.admission...)...)
			// When the override activates, then its Event qualifies requestedBy
			ev := h.eventFor(t, "o", "Activated")
			if !strings.Contains(ev.Message, tc.want) {
				t.Fatalf("Event message %q does not contain %q", ev.Message, tc.want)
			}
		})
	}
}
