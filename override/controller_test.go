package override

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// fakeEngine is the engine side of the controller: a policy that a test
// reloads, and the overrides the controller hands over.
type fakeEngine struct {
	pol atomic.Pointer[policy.Compiled]

	mu        sync.Mutex
	overrides []limiter.Override
}

func (e *fakeEngine) Policy() *policy.Compiled { return e.pol.Load() }
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

func testOverride(t *testing.T, ns, name, by string) *unstructured.Unstructured {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	o := &Override{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID(ns + "-" + name), CreationTimestamp: metav1.NewTime(now)},
		Spec: Spec{Budgets: []string{"pod-deletes"}, ExpiresAt: metav1.NewTime(now.Add(30 * time.Minute)), Reason: "INC-1: drain", RequestedBy: by}}
	u, err := o.ToUnstructured()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestControllerFollowsTheBreakGlassNamespaceOnReload: a reload that moved
// breakGlass.namespace moved the webhook's exemption but not the watch, so
// the old namespace's overrides kept applying and the new one's never did.
func TestControllerFollowsTheBreakGlassNamespaceOnReload(t *testing.T) {
	scheme := runtime.NewScheme()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{GVR: "OverrideList"},
		testOverride(t, "bg-a", "in-a", "alice"), testOverride(t, "bg-b", "in-b", "bob"))
	events := kubefake.NewClientset()
	var evSeq atomic.Int64
	events.PrependReactor("create", "events", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ev := a.(k8stesting.CreateAction).GetObject().(*corev1.Event)
		if ev.Name == "" { // the fake tracker does not generate names
			ev.Name = fmt.Sprintf("%s%d", ev.GenerateName, evSeq.Add(1))
		}
		return false, nil, nil
	})
	eng := &fakeEngine{}
	eng.pol.Store(policyIn(t, "bg-a"))
	c, err := NewController(ControllerConfig{Client: dyn, Events: events.CoreV1(), Engine: eng, Replica: "r1", Tick: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	eventually(t, "the override of bg-a applies", func() bool { return eng.applied() == "bg-a/in-a" })

	eng.pol.Store(policyIn(t, "bg-b"))
	eventually(t, "after the reload only the override of bg-b applies", func() bool { return eng.applied() == "bg-b/in-b" })

	// The override left behind is told why it stopped applying.
	eventually(t, "an Event on bg-a/in-a says why it no longer applies", func() bool {
		l, err := events.CoreV1().Events("bg-a").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, ev := range l.Items {
			if ev.InvolvedObject.Name == "in-a" && ev.Reason == "Revoked" && strings.Contains(ev.Message, "breakGlass.namespace is now bg-b") {
				return true
			}
		}
		return false
	})

	// A new override in the new namespace is seen by the moved watch.
	if _, err := dyn.Resource(GVR).Namespace("bg-b").Create(context.Background(), testOverride(t, "bg-b", "second", "carol"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new override of bg-b applies", func() bool { return eng.applied() == fmt.Sprintf("bg-b/in-b,bg-b/%s", "second") })
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
			objs := append([]runtime.Object{testOverride(t, "bg-a", "o", "alice")}, tc.admission...)
			dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
				GVR: "OverrideList", vapGVR: "ValidatingAdmissionPolicyList", vapBindingGVR: "ValidatingAdmissionPolicyBindingList",
			}, objs...)
			events := kubefake.NewClientset()
			eng := &fakeEngine{}
			eng.pol.Store(policyIn(t, "bg-a"))
			c, err := NewController(ControllerConfig{Client: dyn, Events: events.CoreV1(), Engine: eng, Replica: "r1", Tick: 10 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			var msg string
			eventually(t, "the Activated Event", func() bool {
				l, err := events.CoreV1().Events("bg-a").List(context.Background(), metav1.ListOptions{})
				if err != nil || len(l.Items) == 0 {
					return false
				}
				msg = l.Items[0].Message
				return true
			})
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("Event message %q does not contain %q", msg, tc.want)
			}
		})
	}
}
