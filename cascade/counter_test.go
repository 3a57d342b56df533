package cascade

import (
	"errors"
	"maps"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	metadatafake "k8s.io/client-go/metadata/fake"
	"k8s.io/utils/ptr"

	"github.com/kubedefender/kubedefender/internal/testwait"
)

func TestPodsInNamespace(t *testing.T) {
	w := newWorld()
	c, _ := startCounter(t, Config{}, w.objects...)
	for _, tc := range []struct {
		name string
		ns   string
		want int
	}{
		{name: "a namespace counts its pods but not the one already being deleted", ns: "prod", want: 15},
		{name: "another namespace counts only its own", ns: "dev", want: 4},
		{name: "a terminating namespace still counts its live pods", ns: "leaving", want: 2},
		{name: "an unknown namespace has none", ns: "nope", want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := c.PodsInNamespace(tc.ns); got != tc.want {
				t.Errorf("PodsInNamespace(%q) = %d, want %d", tc.ns, got, tc.want)
			}
		})
	}
}

func TestPodsOwnedBy(t *testing.T) {
	w := newWorld()
	c, _ := startCounter(t, Config{}, w.objects...)
	for _, tc := range []struct {
		name    string
		ref     ObjectRef
		want    int
		wantErr string // a part of the error; "" for none
	}{
		{name: "a Deployment removes the pods of all its ReplicaSets", ref: ObjectRef{Kind: KindDeployment, Namespace: "prod", Name: "web"}, want: 4},
		{name: "a ReplicaSet removes its pods but not the one already being deleted", ref: ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "web-new"}, want: 3},
		{name: "a ReplicaSet without a Deployment removes its pods", ref: ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "bare"}, want: 2},
		{name: "a StatefulSet removes its pods", ref: ObjectRef{Kind: KindStatefulSet, Namespace: "prod", Name: "db"}, want: 2},
		{name: "a DaemonSet removes its pods on every node", ref: ObjectRef{Kind: KindDaemonSet, Namespace: "prod", Name: "agent"}, want: 2},
		{name: "a ReplicationController removes its pods", ref: ObjectRef{Kind: KindReplicationController, Namespace: "prod", Name: "legacy"}, want: 1},
		{name: "a CronJob removes the pods of its Jobs", ref: ObjectRef{Kind: KindCronJob, Namespace: "prod", Name: "nightly"}, want: 2},
		{name: "a Job of a CronJob removes its pods", ref: ObjectRef{Kind: KindJob, Namespace: "prod", Name: "nightly-1"}, want: 2},
		{name: "a Job removes its pods", ref: ObjectRef{Kind: KindJob, Namespace: "prod", Name: "migrate"}, want: 1},
		{name: "a given UID is used without a cache lookup", ref: ObjectRef{Kind: KindStatefulSet, Namespace: "prod", Name: "not-cached", UID: w.sts.UID}, want: 2},
		{name: "a workload with no pods removes none", ref: ObjectRef{Kind: KindStatefulSet, Namespace: "prod", Name: "empty", UID: "no-such-uid"}, want: 0},
		{name: "a workload missing from the cache is an error", ref: ObjectRef{Kind: KindDeployment, Namespace: "prod", Name: "missing"}, wantErr: notCached},
		{name: "a kind that owns no pods is an error", ref: ObjectRef{Kind: "Service", Namespace: "prod", Name: "web"}, wantErr: unknownKind},
		{name: "a pod is not a workload", ref: ObjectRef{Kind: KindPod, Namespace: "prod", Name: "web-new-0"}, wantErr: unknownKind},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.PodsOwnedBy(tc.ref)
			if !errorIs(err, tc.wantErr) {
				t.Fatalf("PodsOwnedBy(%s) error = %v, want %v", tc.ref, err, tc.wantErr)
			}
			if got.Total != tc.want {
				t.Errorf("PodsOwnedBy(%s) = %d, want %d", tc.ref, got.Total, tc.want)
			}
			if tc.want > 0 && !maps.Equal(got.ByNamespace, map[string]int{"prod": tc.want}) {
				t.Errorf("PodsOwnedBy(%s).ByNamespace = %v, want all in prod", tc.ref, got.ByNamespace)
			}
		})
	}
}

func TestPodsOnNodeAndTaints(t *testing.T) {
	w := newWorld()
	c, _ := startCounter(t, Config{}, w.objects...)
	noExecute := corev1.Taint{Key: "example.com/broken", Value: "yes", Effect: corev1.TaintEffectNoExecute}
	noSchedule := corev1.Taint{Key: "example.com/broken", Value: "yes", Effect: corev1.TaintEffectNoSchedule}
	for _, tc := range []struct {
		name string
		got  Removal
		want map[string]int
	}{
		{name: "deleting n1 removes its pods across namespaces", got: c.PodsOnNode("n1"), want: map[string]int{"prod": 5, "dev": 1}},
		{name: "deleting n2 removes its pods across namespaces", got: c.PodsOnNode("n2"), want: map[string]int{"prod": 4, "dev": 1, "leaving": 2}},
		{name: "deleting a node without pods removes none", got: c.PodsOnNode("n9"), want: map[string]int{}},
		{name: "a NoExecute taint on n1 evicts all but the DaemonSet pod that tolerates everything", got: c.PodsEvictedByTaint("n1", noExecute), want: map[string]int{"prod": 4, "dev": 1}},
		{name: "a NoSchedule taint evicts nothing", got: c.PodsEvictedByTaint("n1", noSchedule), want: map[string]int{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.got.ByNamespace
			if got == nil {
				got = map[string]int{}
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("removal = %v, want %v", got, tc.want)
			}
			total := 0
			for _, n := range tc.want {
				total += n
			}
			if tc.got.Total != total {
				t.Errorf("total = %d, want %d", tc.got.Total, total)
			}
		})
	}
}

func TestPodsEvictedByTaintHonoursTolerations(t *testing.T) {
	taint := corev1.Taint{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoExecute}
	pods := []runtime.Object{
		podOf("a", "no-tolerations", "n1", nil),
		podOf("a", "exists-any-key", "n1", nil, corev1.Toleration{Operator: corev1.TolerationOpExists}),
		podOf("a", "exists-this-key", "n1", nil, corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}),
		podOf("a", "equal-this-value", "n1", nil, corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "gpu"}),
		podOf("a", "equal-other-value", "n1", nil, corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "cpu"}),
		podOf("a", "noschedule-only", "n1", nil, corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}),
		podOf("a", "bounded-seconds", "n1", nil, corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpExists, TolerationSeconds: ptr.To[int64](60)}),
		podOf("a", "default-tolerations", "n1", nil,
			corev1.Toleration{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)},
			corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)}),
		podOf("a", "other-node", "n2", nil),
	}
	c, _ := startCounter(t, Config{}, pods...)
	// Evicted: no-tolerations, equal-other-value, noschedule-only,
	// bounded-seconds (after 60s), default-tolerations.
	if got := c.PodsEvictedByTaint("n1", taint); got.Total != 5 {
		t.Errorf("PodsEvictedByTaint = %d, want 5", got.Total)
	}
	notReady := corev1.Taint{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoExecute}
	// The not-ready taint: only the any-key pod stays; the "dedicated"
	// tolerations do not match it, and default-tolerations goes after 300s.
	if got := c.PodsEvictedByTaint("n1", notReady); got.Total != 7 {
		t.Errorf("PodsEvictedByTaint(not-ready) = %d, want 7", got.Total)
	}
}

func TestEvictionFor(t *testing.T) {
	taint := corev1.Taint{Key: "k", Value: "v", Effect: corev1.TaintEffectNoExecute}
	for _, tc := range []struct {
		name      string
		tols      []corev1.Toleration
		taint     corev1.Taint
		cmpOps    bool
		want      Eviction
		wantDelay int64
	}{
		{name: "no tolerations means eviction now", want: EvictedNow},
		{name: "an empty key with Exists tolerates every taint", tols: []corev1.Toleration{{Operator: corev1.TolerationOpExists}}, want: Tolerated},
		{name: "Exists on the key tolerates any value", tols: []corev1.Toleration{{Key: "k", Operator: corev1.TolerationOpExists}}, want: Tolerated},
		{name: "Equal with the same value tolerates", tols: []corev1.Toleration{{Key: "k", Operator: corev1.TolerationOpEqual, Value: "v"}}, want: Tolerated},
		{name: "an empty operator means Equal", tols: []corev1.Toleration{{Key: "k", Value: "v"}}, want: Tolerated},
		{name: "Equal with another value does not tolerate", tols: []corev1.Toleration{{Key: "k", Operator: corev1.TolerationOpEqual, Value: "w"}}, want: EvictedNow},
		{name: "another key does not tolerate", tols: []corev1.Toleration{{Key: "j", Operator: corev1.TolerationOpExists}}, want: EvictedNow},
		{name: "a NoSchedule toleration does not tolerate NoExecute", tols: []corev1.Toleration{{Key: "k", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}, want: EvictedNow},
		{name: "tolerationSeconds delays the eviction", tols: []corev1.Toleration{{Key: "k", Operator: corev1.TolerationOpExists, TolerationSeconds: ptr.To[int64](30)}}, want: EvictedLater, wantDelay: 30},
		{name: "zero tolerationSeconds evicts now", tols: []corev1.Toleration{{Key: "k", Operator: corev1.TolerationOpExists, TolerationSeconds: ptr.To[int64](0)}}, want: EvictedNow},
		{name: "as in the taint manager, a bounded match beats an unbounded one", tols: []corev1.Toleration{
			{Operator: corev1.TolerationOpExists},
			{Key: "k", Operator: corev1.TolerationOpExists, TolerationSeconds: ptr.To[int64](90)},
			{Key: "k", Operator: corev1.TolerationOpExists, TolerationSeconds: ptr.To[int64](45)},
		}, want: EvictedLater, wantDelay: 45},
		{name: "a bounded toleration of another key does not matter", tols: []corev1.Toleration{
			{Key: "k", Operator: corev1.TolerationOpExists},
			{Key: "j", Operator: corev1.TolerationOpExists, TolerationSeconds: ptr.To[int64](5)},
		}, want: Tolerated},
		{name: "a NoSchedule taint evicts nobody", taint: corev1.Taint{Key: "k", Effect: corev1.TaintEffectNoSchedule}, want: Tolerated},
		{name: "Gt tolerates a larger taint value when the cluster enables comparisons", tols: []corev1.Toleration{{Key: "k", Operator: corev1.TolerationOpGt, Value: "3"}},
			taint: corev1.Taint{Key: "k", Value: "5", Effect: corev1.TaintEffectNoExecute}, cmpOps: true, want: Tolerated},
		{name: "Gt matches nothing when the cluster does not enable comparisons", tols: []corev1.Toleration{{Key: "k", Operator: corev1.TolerationOpGt, Value: "3"}},
			taint: corev1.Taint{Key: "k", Value: "5", Effect: corev1.TaintEffectNoExecute}, want: EvictedNow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tt := tc.taint
			if tt.Effect == "" {
				tt = taint
			}
			got, delay := EvictionFor(tc.tols, &tt, tc.cmpOps)
			if got != tc.want || int64(delay.Seconds()) != tc.wantDelay {
				t.Errorf("EvictionFor = %v after %s, want %v after %ds", got, delay, tc.want, tc.wantDelay)
			}
		})
	}
}

func TestScaleDown(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old, new int32
		want     int
	}{
		{name: "lowering replicas removes the difference", old: 30, new: 25, want: 5},
		{name: "scaling to zero removes all", old: 25, new: 0, want: 25},
		{name: "same replicas (a rollout) removes none", old: 3, new: 3, want: 0},
		{name: "scaling up removes none", old: 3, new: 10, want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ScaleDown(tc.old, tc.new); got != tc.want {
				t.Errorf("ScaleDown(%d, %d) = %d, want %d", tc.old, tc.new, got, tc.want)
			}
		})
	}
}

func TestReplicas(t *testing.T) {
	w := newWorld()
	c, _ := startCounter(t, Config{}, w.objects...)
	for _, tc := range []struct {
		name    string
		ref     ObjectRef
		want    int32
		wantErr string // a part of the error; "" for none
	}{
		{name: "a Deployment's replicas", ref: ObjectRef{Kind: KindDeployment, Namespace: "prod", Name: "web"}, want: 4},
		{name: "a StatefulSet's replicas", ref: ObjectRef{Kind: KindStatefulSet, Namespace: "prod", Name: "db"}, want: 2},
		{name: "unset replicas default to one", ref: ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "doomed-1"}, want: 1},
		{name: "a DaemonSet has no replicas", ref: ObjectRef{Kind: KindDaemonSet, Namespace: "prod", Name: "agent"}, wantErr: unknownKind},
		{name: "a missing workload", ref: ObjectRef{Kind: KindDeployment, Namespace: "prod", Name: "nope"}, wantErr: notCached},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.Replicas(tc.ref)
			if !errorIs(err, tc.wantErr) || got != tc.want {
				t.Errorf("Replicas(%s) = %d, %v; want %d, %v", tc.ref, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestObjectsInNamespace(t *testing.T) {
	services := schema.GroupVersionResource{Version: "v1", Resource: "services"}
	scheme := runtime.NewScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	svc := func(ns, name string, deleting bool) runtime.Object {
		m := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}, ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		if deleting {
			m.DeletionTimestamp = &metav1.Time{}
		}
		return m
	}
	md := metadatafake.NewSimpleMetadataClient(scheme, svc("prod", "a", false), svc("prod", "b", false), svc("prod", "c", true), svc("dev", "a", false))
	c, _ := startCounter(t, Config{Metadata: md})

	_, err := c.ObjectsInNamespace(services, "prod")
	if err != nil && !errors.Is(err, ErrNotSynced) {
		t.Fatalf("the first call failed with %v, want nil or ErrNotSynced", err)
	}
	testwait.Until(t, "the services watch syncs", func() bool {
		_, err := c.ObjectsInNamespace(services, "prod")
		return err == nil
	})
	for ns, want := range map[string]int{"prod": 2, "dev": 1, "none": 0} {
		if got, err := c.ObjectsInNamespace(services, ns); err != nil || got != want {
			t.Errorf("ObjectsInNamespace(services, %s) = %d, %v; want %d", ns, got, err, want)
		}
	}

	t.Run("pods are counted by the pod store, not a second watch", func(t *testing.T) {
		pods := schema.GroupVersionResource{Version: "v1", Resource: "pods"}
		w := newWorld()
		c, _ := startCounter(t, Config{}, w.objects...)
		if err := c.Track(pods); err != nil {
			t.Fatalf("Track(pods) failed: %v", err)
		}
		if got, err := c.ObjectsInNamespace(pods, "prod"); err != nil || got != 15 {
			t.Errorf("ObjectsInNamespace(pods, prod) = %d, %v; want 15", got, err)
		}
		if len(c.objects) != 0 {
			t.Errorf("a metadata watch was started for pods")
		}
	})

	t.Run("a counter without a metadata client cannot count other resources", func(t *testing.T) {
		c, _ := startCounter(t, Config{})
		if _, err := c.ObjectsInNamespace(services, "prod"); err == nil {
			t.Error("ObjectsInNamespace succeeded without a metadata client")
		}
	})
}

func TestNewRequiresAClient(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without a client succeeded")
	}
}

func TestAnUnstartedCounterIsNotSynced(t *testing.T) {
	c, err := New(Config{Client: fakeClient()})
	if err != nil {
		t.Fatal(err)
	}
	if c.HasSynced() {
		t.Error("HasSynced before Start = true")
	}
	if r, ok := c.FollowUp(FollowUpDelete, ObjectRef{Kind: KindPod, Namespace: "a", Name: "b"}); ok {
		t.Errorf("FollowUp before sync = %s, want no follow-up (callers judge PerObject)", r)
	}
}

func TestAddedNoExecuteTaints(t *testing.T) {
	broken := corev1.Taint{Key: "broken", Value: "yes", Effect: corev1.TaintEffectNoExecute}
	for _, tc := range []struct {
		name     string
		old, new []corev1.Taint
		want     []corev1.Taint
	}{
		{name: "a new NoExecute taint is added", new: []corev1.Taint{broken}, want: []corev1.Taint{broken}},
		{name: "a taint the node already had is not", old: []corev1.Taint{broken}, new: []corev1.Taint{broken}},
		{name: "a changed value is a new taint", old: []corev1.Taint{{Key: "broken", Value: "no", Effect: corev1.TaintEffectNoExecute}}, new: []corev1.Taint{broken}, want: []corev1.Taint{broken}},
		{name: "a NoSchedule taint is ignored", new: []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}}},
		{name: "removing taints adds none", old: []corev1.Taint{broken}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := AddedNoExecuteTaints(tc.old, tc.new)
			if len(got) != len(tc.want) || (len(got) > 0 && got[0] != tc.want[0]) {
				t.Errorf("AddedNoExecuteTaints = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPodsEvictedByTaintsCountsEachPodOnce(t *testing.T) {
	w := newWorld()
	c, _ := startCounter(t, Config{}, w.objects...)
	taints := []corev1.Taint{
		{Key: "a", Effect: corev1.TaintEffectNoExecute},
		{Key: "b", Effect: corev1.TaintEffectNoExecute},
	}
	// n1 holds 6 live pods; only the DaemonSet's tolerates everything.
	if got := c.PodsEvictedByTaints("n1", taints); got.Total != 5 {
		t.Errorf("PodsEvictedByTaints(n1, two taints) = %d, want 5", got.Total)
	}
	if got := c.PodsEvictedByTaints("n1", nil); got.Total != 0 {
		t.Errorf("PodsEvictedByTaints(n1, no taints) = %d, want 0", got.Total)
	}
}

func TestPod(t *testing.T) {
	w := newWorld()
	c, _ := startCounter(t, Config{}, w.objects...)
	for _, tc := range []struct {
		name      string
		ns, pod   string
		want      PodInfo
		wantFound bool
	}{
		{name: "an owned, bound pod shows its controller and node", ns: "prod", pod: "web-new-1", wantFound: true, want: PodInfo{
			Namespace: "prod", Name: "web-new-1", UID: uidFor("prod/web-new-1"), Node: "n1",
			Controller: ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "web-new", UID: w.rsNew.UID},
		}},
		{name: "a pod being deleted says so", ns: "prod", pod: "web-new-gone", wantFound: true, want: PodInfo{
			Namespace: "prod", Name: "web-new-gone", UID: uidFor("prod/web-new-gone"), Node: "n1", Deleting: true,
			Controller: ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "web-new", UID: w.rsNew.UID},
		}},
		{name: "an unowned, unbound pod", ns: "dev", pod: "scratch-3", wantFound: true, want: PodInfo{Namespace: "dev", Name: "scratch-3", UID: uidFor("dev/scratch-3")}},
		{name: "an unknown pod", ns: "dev", pod: "nope"},
		{name: "an unknown namespace", ns: "nope", pod: "scratch-3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, found := c.Pod(tc.ns, tc.pod)
			if found != tc.wantFound || got != tc.want {
				t.Errorf("Pod(%s, %s) = %+v, %v; want %+v, %v", tc.ns, tc.pod, got, found, tc.want, tc.wantFound)
			}
		})
	}
}

// errorIs says whether err is nil when want is "", or holds want.
func errorIs(err error, want string) bool {
	if want == "" {
		return err == nil
	}
	return err != nil && strings.Contains(err.Error(), want)
}
