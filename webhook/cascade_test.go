package webhook

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kubedefender/kubedefender/cascade"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

const atRootPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  budgets:
  - name: pods-down
    match: {verbs: [delete, evict], resources: [pods]}
    per: [namespace]
    cascades: AtRoot
    windows: [{window: 1m, limit: 20}]
  - name: services-down
    match: {verbs: [delete], resources: [services]}
    cascades: AtRoot
    windows: [{window: 1m, limit: 20}]
`

// recordingEngine admits (or denies) everything and remembers what it was
// asked.
type recordingEngine struct {
	p     *policy.Compiled
	deny  bool
	mu    sync.Mutex
	asked []limiter.Attributes
}

func (e *recordingEngine) Decide(_ context.Context, a *limiter.Attributes) limiter.Decision {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.asked = append(e.asked, *a)
	if e.deny {
		return limiter.Decision{Code: 429, Reason: "TooManyRequests", Message: "denied", Rule: "pods-down"}
	}
	return limiter.Decision{Allowed: true, Charged: !a.FollowUp && !a.DryRun}
}

func (e *recordingEngine) Policy() *policy.Compiled { return e.p }

func (e *recordingEngine) last(t *testing.T) limiter.Attributes {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.asked) == 0 {
		t.Fatal("the engine was not asked")
	}
	return e.asked[len(e.asked)-1]
}

// fakeCascades answers from fixed counts and records what it is told.
type fakeCascades struct {
	synced     bool
	nsPods     map[string]int
	objects    map[string]int // "group/resource/ns"
	owned      map[string]cascade.Removal
	onNode     map[string]cascade.Removal
	tainted    map[string]cascade.Removal
	replicas   map[string]int32
	followUps  map[string]cascade.Reason // "Kind/ns/name"
	recorded   []cascade.Root
	followAsks []string
	ownedAsks  []cascade.ObjectRef
	taintsSeen []corev1.Taint
}

func (f *fakeCascades) HasSynced() bool                     { return f.synced }
func (f *fakeCascades) PodsInNamespace(ns string) int       { return f.nsPods[ns] }
func (f *fakeCascades) PodsOnNode(n string) cascade.Removal { return f.onNode[n] }
func (f *fakeCascades) ObjectsInNamespace(gvr schema.GroupVersionResource, ns string) (int, error) {
	return f.objects[gvr.Group+"/"+gvr.Resource+"/"+ns], nil
}
func (f *fakeCascades) PodsOwnedBy(ref cascade.ObjectRef) (cascade.Removal, error) {
	f.ownedAsks = append(f.ownedAsks, ref)
	r, ok := f.owned[ref.Kind+"/"+ref.Namespace+"/"+ref.Name]
	if !ok {
		return cascade.Removal{}, errors.New("not in the fake's cache")
	}
	return r, nil
}
func (f *fakeCascades) PodsEvictedByTaints(node string, taints []corev1.Taint) cascade.Removal {
	f.taintsSeen = append(f.taintsSeen, taints...)
	return f.tainted[node]
}
func (f *fakeCascades) Replicas(ref cascade.ObjectRef) (int32, error) {
	r, ok := f.replicas[ref.Kind+"/"+ref.Namespace+"/"+ref.Name]
	if !ok {
		return 0, errors.New("not in the fake's cache")
	}
	return r, nil
}
func (f *fakeCascades) RecordRoot(r cascade.Root) error {
	f.recorded = append(f.recorded, r)
	return nil
}
func (f *fakeCascades) FollowUp(_ cascade.FollowUpOp, ref cascade.ObjectRef) (cascade.Reason, bool) {
	k := ref.Kind + "/" + ref.Namespace + "/" + ref.Name
	f.followAsks = append(f.followAsks, k)
	why, ok := f.followUps[k]
	return why, ok
}

func byNS(m map[string]int) cascade.Removal {
	r := cascade.Removal{ByNamespace: m}
	for _, n := range m {
		r.Total += n
	}
	return r
}

func newFakeCascades() *fakeCascades {
	return &fakeCascades{
		synced:  true,
		nsPods:  map[string]int{"prod": 30, "empty": 0},
		objects: map[string]int{"/services/prod": 4},
		owned: map[string]cascade.Removal{
			"Deployment/prod/web":            byNS(map[string]int{"prod": 10}),
			"Job/prod/batch":                 byNS(map[string]int{"prod": 3}),
			"ReplicationController/prod/old": byNS(map[string]int{"prod": 2}),
		},
		onNode:    map[string]cascade.Removal{"n1": byNS(map[string]int{"a": 3, "b": 7})},
		tainted:   map[string]cascade.Removal{"n1": byNS(map[string]int{"a": 2})},
		replicas:  map[string]int32{"Deployment/prod/web": 30},
		followUps: map[string]cascade.Reason{"Pod/prod/doomed": cascade.ReasonNamespaceTerminating, "ReplicaSet/prod/web-1": cascade.ReasonManagedByDeployment},
	}
}

// cascadeReview is an AdmissionReview of a cascade root or follow-up.
type cascadeReview struct {
	op, group, resource, sub, ns, name string
	object, oldObject, options         string // JSON; "" is null
	dryRun                             bool
}

func (r cascadeReview) json() string {
	or := func(s string) string {
		if s == "" {
			return "null"
		}
		return s
	}
	return fmt.Sprintf(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"X"},"resource":{"group":%q,"version":"v1","resource":%q},"subResource":%q,"name":%q,"namespace":%q,"operation":%q,"userInfo":{"username":"alice"},"object":%s,"oldObject":%s,"dryRun":%t,"options":%s}}`,
		r.group, r.resource, r.sub, r.name, r.ns, r.op, or(r.object), or(r.oldObject), r.dryRun, or(r.options))
}

func meta(uid string, extra string) string {
	return fmt.Sprintf(`{"metadata":{"uid":%q%s}`, uid, extra)
}

func withReplicas(uid string, n int) string {
	return fmt.Sprintf(`{"metadata":{"uid":%q},"spec":{"replicas":%d,"template":{"spec":{"containers":[{"name":"a","image":"a"}]}}}}`, uid, n)
}

func withTaints(taints string) string {
	return `{"metadata":{"uid":"node-uid"},"spec":{"taints":` + taints + `}}`
}

func TestCascadeRootsAndFollowUps(t *testing.T) {
	pods := func(ns string, n int64) limiter.Removal {
		return limiter.Removal{Resource: "pods", Namespace: ns, Count: n}
	}
	cases := []struct {
		name       string
		review     cascadeReview
		notSynced  bool
		deny       bool
		removes    []limiter.Removal
		followUp   bool
		recorded   []cascade.Root
		result     string
		ownedAsked bool
	}{
		{name: "a namespace delete removes its pods and the services an AtRoot budget names",
			review:   cascadeReview{op: "DELETE", resource: "namespaces", name: "prod", oldObject: meta("ns-uid", "") + "}"},
			removes:  []limiter.Removal{pods("prod", 30), {Resource: "services", Namespace: "prod", Count: 4}},
			recorded: []cascade.Root{{Op: cascade.RootDelete, Object: cascade.ObjectRef{Kind: cascade.KindNamespace, Name: "prod", UID: "ns-uid"}}},
			result:   ResultAllowed},
		{name: "a denied namespace delete is not recorded as a root",
			review:  cascadeReview{op: "DELETE", resource: "namespaces", name: "prod", oldObject: meta("ns-uid", "") + "}"},
			deny:    true,
			removes: []limiter.Removal{pods("prod", 30), {Resource: "services", Namespace: "prod", Count: 4}},
			result:  ResultDenied},
		{name: "a dry-run namespace delete is judged with its count but not recorded",
			review:  cascadeReview{op: "DELETE", resource: "namespaces", name: "prod", oldObject: meta("ns-uid", "") + "}", dryRun: true},
			removes: []limiter.Removal{pods("prod", 30), {Resource: "services", Namespace: "prod", Count: 4}},
			result:  ResultAllowed},
		{name: "an empty namespace's delete removes nothing",
			review:   cascadeReview{op: "DELETE", resource: "namespaces", name: "empty", oldObject: meta("ns-uid", "") + "}"},
			recorded: []cascade.Root{{Op: cascade.RootDelete, Object: cascade.ObjectRef{Kind: cascade.KindNamespace, Name: "empty", UID: "ns-uid"}}},
			result:   ResultAllowed},
		{name: "a Deployment delete without options (Background by default) removes the pods it owns",
			review:     cascadeReview{op: "DELETE", group: "apps", resource: "deployments", ns: "prod", name: "web", oldObject: withReplicas("d-uid", 10)},
			removes:    []limiter.Removal{pods("prod", 10)},
			recorded:   []cascade.Root{{Op: cascade.RootDelete, Object: cascade.ObjectRef{Kind: cascade.KindDeployment, Namespace: "prod", Name: "web", UID: "d-uid"}}},
			result:     ResultAllowed,
			ownedAsked: true},
		{name: "a Deployment delete with propagation Orphan removes nothing",
			review: cascadeReview{op: "DELETE", group: "apps", resource: "deployments", ns: "prod", name: "web", oldObject: withReplicas("d-uid", 10),
				options: `{"kind":"DeleteOptions","apiVersion":"meta.k8s.io/v1","propagationPolicy":"Orphan"}`},
			result: ResultAllowed},
		{name: "a Deployment delete with orphanDependents removes nothing",
			review: cascadeReview{op: "DELETE", group: "apps", resource: "deployments", ns: "prod", name: "web", oldObject: withReplicas("d-uid", 10),
				options: `{"kind":"DeleteOptions","apiVersion":"meta.k8s.io/v1","orphanDependents":true}`},
			result: ResultAllowed},
		{name: "a Deployment carrying the orphan finalizer, deleted without options, removes nothing",
			review: cascadeReview{op: "DELETE", group: "apps", resource: "deployments", ns: "prod", name: "web", oldObject: meta("d-uid", `,"finalizers":["orphan"]`) + "}",
				options: `{"kind":"DeleteOptions","apiVersion":"meta.k8s.io/v1"}`},
			result: ResultAllowed},
		{name: "a Job delete without options orphans its pods (the API server's default for Jobs)",
			review: cascadeReview{op: "DELETE", group: "batch", resource: "jobs", ns: "prod", name: "batch", oldObject: meta("j-uid", "") + "}"},
			result: ResultAllowed},
		{name: "a Job delete with propagation Foreground removes its pods",
			review: cascadeReview{op: "DELETE", group: "batch", resource: "jobs", ns: "prod", name: "batch", oldObject: meta("j-uid", "") + "}",
				options: `{"propagationPolicy":"Foreground"}`},
			removes:    []limiter.Removal{pods("prod", 3)},
			recorded:   []cascade.Root{{Op: cascade.RootDelete, Object: cascade.ObjectRef{Kind: cascade.KindJob, Namespace: "prod", Name: "batch", UID: "j-uid"}}},
			result:     ResultAllowed,
			ownedAsked: true},
		{name: "a ReplicationController delete with propagation Background removes its pods",
			review: cascadeReview{op: "DELETE", resource: "replicationcontrollers", ns: "prod", name: "old", oldObject: meta("rc-uid", "") + "}",
				options: `{"propagationPolicy":"Background"}`},
			removes:    []limiter.Removal{pods("prod", 2)},
			recorded:   []cascade.Root{{Op: cascade.RootDelete, Object: cascade.ObjectRef{Kind: cascade.KindReplicationController, Namespace: "prod", Name: "old", UID: "rc-uid"}}},
			result:     ResultAllowed,
			ownedAsked: true},
		{name: "a scale-down by update removes old minus new replicas",
			review:   cascadeReview{op: "UPDATE", group: "apps", resource: "deployments", ns: "prod", name: "web", oldObject: withReplicas("d-uid", 30), object: withReplicas("d-uid", 25)},
			removes:  []limiter.Removal{pods("prod", 5)},
			recorded: []cascade.Root{{Op: cascade.RootScaleDown, Object: cascade.ObjectRef{Kind: cascade.KindDeployment, Namespace: "prod", Name: "web", UID: "d-uid"}, Pods: 5}},
			result:   ResultAllowed},
		{name: "a scale-down through the scale subresource removes old minus new replicas",
			review: cascadeReview{op: "UPDATE", group: "apps", resource: "deployments", sub: "scale", ns: "prod", name: "web",
				oldObject: `{"kind":"Scale","metadata":{"uid":"d-uid"},"spec":{"replicas":25},"status":{"replicas":25}}`,
				object:    `{"kind":"Scale","metadata":{"uid":"d-uid"},"spec":{"replicas":0},"status":{"replicas":25}}`},
			removes:  []limiter.Removal{pods("prod", 25)},
			recorded: []cascade.Root{{Op: cascade.RootScaleDown, Object: cascade.ObjectRef{Kind: cascade.KindDeployment, Namespace: "prod", Name: "web"}, Pods: 25}},
			result:   ResultAllowed},
		{name: "a scale to zero, whose Scale omits spec.replicas, removes every replica",
			review: cascadeReview{op: "UPDATE", group: "apps", resource: "deployments", sub: "scale", ns: "prod", name: "web",
				oldObject: `{"kind":"Scale","metadata":{"uid":"d-uid"},"spec":{"replicas":25},"status":{"replicas":25}}`,
				object:    `{"kind":"Scale","metadata":{"uid":"d-uid"},"spec":{},"status":{"replicas":25}}`},
			removes:  []limiter.Removal{pods("prod", 25)},
			recorded: []cascade.Root{{Op: cascade.RootScaleDown, Object: cascade.ObjectRef{Kind: cascade.KindDeployment, Namespace: "prod", Name: "web"}, Pods: 25}},
			result:   ResultAllowed},
		{name: "a scale subresource without an old object reads the cached replicas",
			review: cascadeReview{op: "UPDATE", group: "apps", resource: "deployments", sub: "scale", ns: "prod", name: "web",
				object: `{"kind":"Scale","metadata":{"uid":"d-uid"},"spec":{"replicas":28}}`},
			removes:  []limiter.Removal{pods("prod", 2)},
			recorded: []cascade.Root{{Op: cascade.RootScaleDown, Object: cascade.ObjectRef{Kind: cascade.KindDeployment, Namespace: "prod", Name: "web"}, Pods: 2}},
			result:   ResultAllowed},
		{name: "a scale-up removes nothing",
			review: cascadeReview{op: "UPDATE", group: "apps", resource: "deployments", ns: "prod", name: "web", oldObject: withReplicas("d-uid", 3), object: withReplicas("d-uid", 5)},
			result: ResultAllowed},
		{name: "a rollout (same replicas, new template) is not a scale-down",
			review: cascadeReview{op: "UPDATE", group: "apps", resource: "deployments", ns: "prod", name: "web", oldObject: withReplicas("d-uid", 3),
				object: `{"metadata":{"uid":"d-uid"},"spec":{"replicas":3,"template":{"spec":{"containers":[{"name":"a","image":"b"}]}}}}`},
			result: ResultAllowed},
		{name: "a ReplicaSet scaled by its Deployment's controller is a follow-up",
			review:   cascadeReview{op: "UPDATE", group: "apps", resource: "replicasets", ns: "prod", name: "web-1", oldObject: withReplicas("rs-uid", 10), object: withReplicas("rs-uid", 5)},
			followUp: true,
			result:   ResultCascade},
		{name: "a node delete removes its pods in each namespace",
			review:   cascadeReview{op: "DELETE", resource: "nodes", name: "n1", oldObject: meta("node-uid", "") + "}"},
			removes:  []limiter.Removal{pods("a", 3), pods("b", 7)},
			recorded: []cascade.Root{{Op: cascade.RootDelete, Object: cascade.ObjectRef{Kind: cascade.KindNode, Name: "n1", UID: "node-uid"}}},
			result:   ResultAllowed},
		{name: "a NoExecute taint added to a node removes the pods that do not tolerate it",
			review: cascadeReview{op: "UPDATE", resource: "nodes", name: "n1",
				oldObject: withTaints(`[{"key":"old","effect":"NoExecute"}]`),
				object:    withTaints(`[{"key":"old","effect":"NoExecute"},{"key":"broken","value":"yes","effect":"NoExecute"},{"key":"soft","effect":"NoSchedule"}]`)},
			removes: []limiter.Removal{pods("a", 2)},
			recorded: []cascade.Root{{Op: cascade.RootTaint, Object: cascade.ObjectRef{Kind: cascade.KindNode, Name: "n1"},
				Taint: corev1.Taint{Key: "broken", Value: "yes", Effect: corev1.TaintEffectNoExecute}}},
			result: ResultAllowed},
		{name: "a NoSchedule taint evicts nothing",
			review: cascadeReview{op: "UPDATE", resource: "nodes", name: "n1", oldObject: withTaints(`[]`), object: withTaints(`[{"key":"soft","effect":"NoSchedule"}]`)},
			result: ResultAllowed},
		{name: "a pod delete the counter calls a follow-up is marked one and counted as cascade",
			review:   cascadeReview{op: "DELETE", resource: "pods", ns: "prod", name: "doomed", oldObject: meta("p-uid", "") + "}"},
			followUp: true,
			result:   ResultCascade},
		{name: "an eviction the counter calls a follow-up is marked one",
			review:   cascadeReview{op: "CREATE", resource: "pods", sub: "eviction", ns: "prod", name: "doomed", object: `{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"doomed"}}`},
			followUp: true,
			result:   ResultCascade},
		{name: "a pod delete that is no follow-up is judged as today",
			review: cascadeReview{op: "DELETE", resource: "pods", ns: "prod", name: "alive", oldObject: meta("p-uid", "") + "}"},
			result: ResultAllowed},
		{name: "until the counter has synced a namespace delete is judged PerObject",
			review:    cascadeReview{op: "DELETE", resource: "namespaces", name: "prod", oldObject: meta("ns-uid", "") + "}"},
			notSynced: true,
			result:    ResultAllowed},
		{name: "until the counter has synced no pod delete is a follow-up",
			review:    cascadeReview{op: "DELETE", resource: "pods", ns: "prod", name: "doomed", oldObject: meta("p-uid", "") + "}"},
			notSynced: true,
			result:    ResultAllowed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := policy.Parse("atroot.yaml", []byte(atRootPolicy))
			if err != nil {
				t.Fatalf("failed to parse the policy: %v", err)
			}
			eng := &recordingEngine{p: p, deny: tc.deny}
			fc := newFakeCascades()
			fc.synced = !tc.notSynced
			env := newTestEnv(t, Config{Engine: eng, Cascades: fc, Namespace: "kubedefender",
				Resolve: func(gr schema.GroupResource) (schema.GroupVersionResource, bool) { return gr.WithVersion("v1"), true }})
			resp := decodeResponse(t, post(env.h, tc.review.json(), "application/json"))
			if resp.Allowed == tc.deny {
				t.Fatalf("allowed = %v, want %v", resp.Allowed, !tc.deny)
			}
			a := eng.last(t)
			if !slices.Equal(a.Removes, tc.removes) {
				t.Errorf("Removes = %+v, want %+v", a.Removes, tc.removes)
			}
			if a.FollowUp != tc.followUp {
				t.Errorf("FollowUp = %v, want %v", a.FollowUp, tc.followUp)
			}
			if !reflect.DeepEqual(fc.recorded, tc.recorded) {
				t.Errorf("recorded roots %+v, want %+v", fc.recorded, tc.recorded)
			}
			if (len(fc.ownedAsks) > 0) != tc.ownedAsked {
				t.Errorf("PodsOwnedBy asked %v, want asked: %v", fc.ownedAsks, tc.ownedAsked)
			}
			op := strings.ToUpper(tc.review.op)
			if got := testutil.ToFloat64(env.h.metrics.requests.WithLabelValues(op, tc.result)); got != 1 {
				t.Errorf("requests_total{operation=%s,result=%s} = %v, want 1", op, tc.result, got)
			}
		})
	}
}

func TestCascadeWithoutAtRootBudgetsAsksNothing(t *testing.T) {
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	eng := &recordingEngine{p: p}
	fc := newFakeCascades()
	env := newTestEnv(t, Config{Engine: eng, Cascades: fc, Namespace: "kubedefender"})
	for _, r := range []cascadeReview{
		{op: "DELETE", resource: "namespaces", name: "prod", oldObject: meta("ns-uid", "") + "}"},
		{op: "DELETE", resource: "pods", ns: "prod", name: "doomed", oldObject: meta("p-uid", "") + "}"},
	} {
		decodeResponse(t, post(env.h, r.json(), "application/json"))
		if a := eng.last(t); len(a.Removes) > 0 || a.FollowUp {
			t.Errorf("%s %s: Removes %+v FollowUp %v without an AtRoot budget", r.op, r.resource, a.Removes, a.FollowUp)
		}
	}
	if len(fc.followAsks) > 0 || len(fc.recorded) > 0 {
		t.Errorf("the counter was asked %v and told %v without an AtRoot budget", fc.followAsks, fc.recorded)
	}
}

func TestCascadeDryRunPodDeleteSpendsNoCredit(t *testing.T) {
	p, err := policy.Parse("atroot.yaml", []byte(atRootPolicy))
	if err != nil {
		t.Fatal(err)
	}
	fc := newFakeCascades()
	env := newTestEnv(t, Config{Engine: &recordingEngine{p: p}, Cascades: fc, Namespace: "kubedefender"})
	decodeResponse(t, post(env.h, cascadeReview{op: "DELETE", resource: "pods", ns: "prod", name: "doomed", oldObject: meta("p-uid", "") + "}", dryRun: true}.json(), "application/json"))
	if len(fc.followAsks) > 0 {
		t.Errorf("a dry run asked FollowUp %v (which spends a scale-down's credit)", fc.followAsks)
	}
}

func TestCascadeRootNamesWhatEachRootRemoves(t *testing.T) {
	cases := []struct {
		name                      string
		verb, group, resource, sb string
		want                      string
	}{
		{name: "a namespace delete removes the objects in it", verb: "delete", resource: "namespaces", want: "the objects in the namespace"},
		{name: "a node delete removes its pods", verb: "delete", resource: "nodes", want: "the pods bound to the node"},
		{name: "a node update may taint its pods away", verb: "update", resource: "nodes", want: "NoExecute taint"},
		{name: "a deployment delete removes the pods it owns", verb: "delete", group: "apps", resource: "deployments", want: "the pods it owns"},
		{name: "a scale update lowers the replicas", verb: "update", group: "apps", resource: "statefulsets", sb: "scale", want: "lower replica count"},
		{name: "a daemonset cannot be scaled", verb: "update", group: "apps", resource: "daemonsets"},
		{name: "a pod delete is no root", verb: "delete", resource: "pods"},
		{name: "an eviction is no root", verb: "evict", resource: "pods", sb: "eviction"},
		{name: "a status update of a workload is no root", verb: "update", group: "apps", resource: "deployments", sb: "status"},
		{name: "a configmap delete is no root", verb: "delete", resource: "configmaps"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := CascadeRoot(tc.verb, tc.group, tc.resource, tc.sb)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("CascadeRoot = %q, want %q", got, tc.want)
			}
		})
	}
}
