package cascade

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/kubedefender/kubedefender/internal/testwait"
)

// uidFor makes a canonical UUID from a short name, so the compact store
// packs it like a real one.
func uidFor(name string) types.UID {
	var b [16]byte
	copy(b[:], name)
	return formatUID(b)
}

func meta(ns, name string, owner runtime.Object) metav1.ObjectMeta {
	m := metav1.ObjectMeta{Namespace: ns, Name: name, UID: uidFor(ns + "/" + name)}
	if owner != nil {
		om := owner.(metav1.Object)
		kind := fmt.Sprintf("%T", owner)
		switch owner.(type) {
		case *appsv1.Deployment:
			kind = KindDeployment
		case *appsv1.ReplicaSet:
			kind = KindReplicaSet
		case *appsv1.StatefulSet:
			kind = KindStatefulSet
		case *appsv1.DaemonSet:
			kind = KindDaemonSet
		case *corev1.ReplicationController:
			kind = KindReplicationController
		case *batchv1.Job:
			kind = KindJob
		case *batchv1.CronJob:
			kind = KindCronJob
		}
		m.OwnerReferences = []metav1.OwnerReference{
			{APIVersion: "v1", Kind: "ConfigMap", Name: "not-a-controller", UID: "cm-uid"},
			{Kind: kind, Name: om.GetName(), UID: om.GetUID(), Controller: ptr.To(true)},
		}
	}
	return m
}

func podOf(ns, name, node string, owner runtime.Object, tols ...corev1.Toleration) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: meta(ns, name, owner), Spec: corev1.PodSpec{NodeName: node, Tolerations: tols}}
}

func podsOf(n int, ns, prefix, node string, owner runtime.Object) []runtime.Object {
	out := make([]runtime.Object, 0, n)
	for i := range n {
		out = append(out, podOf(ns, fmt.Sprintf("%s-%d", prefix, i), node, owner))
	}
	return out
}

// world is a cluster of every kind of root, built once per test.
type world struct {
	deploy   *appsv1.Deployment
	rsNew    *appsv1.ReplicaSet
	rsOld    *appsv1.ReplicaSet
	rsBare   *appsv1.ReplicaSet
	sts      *appsv1.StatefulSet
	ds       *appsv1.DaemonSet
	rc       *corev1.ReplicationController
	cron     *batchv1.CronJob
	cronJob  *batchv1.Job
	job      *batchv1.Job
	doomed   *appsv1.Deployment // Foreground delete in progress
	doomedRS *appsv1.ReplicaSet
	objects  []runtime.Object
}

func newWorld() *world {
	w := &world{}
	w.deploy = &appsv1.Deployment{ObjectMeta: meta("prod", "web", nil), Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](4)}}
	w.rsNew = &appsv1.ReplicaSet{ObjectMeta: meta("prod", "web-new", w.deploy), Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To[int32](3)}}
	w.rsOld = &appsv1.ReplicaSet{ObjectMeta: meta("prod", "web-old", w.deploy), Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To[int32](1)}}
	w.rsBare = &appsv1.ReplicaSet{ObjectMeta: meta("prod", "bare", nil), Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To[int32](2)}}
	w.sts = &appsv1.StatefulSet{ObjectMeta: meta("prod", "db", nil), Spec: appsv1.StatefulSetSpec{Replicas: ptr.To[int32](2)}}
	w.ds = &appsv1.DaemonSet{ObjectMeta: meta("prod", "agent", nil)}
	w.rc = &corev1.ReplicationController{ObjectMeta: meta("prod", "legacy", nil), Spec: corev1.ReplicationControllerSpec{Replicas: ptr.To[int32](1)}}
	w.cron = &batchv1.CronJob{ObjectMeta: meta("prod", "nightly", nil)}
	w.cronJob = &batchv1.Job{ObjectMeta: meta("prod", "nightly-1", w.cron)}
	w.job = &batchv1.Job{ObjectMeta: meta("prod", "migrate", nil)}
	w.doomed = &appsv1.Deployment{ObjectMeta: meta("prod", "doomed", nil)}
	w.doomed.DeletionTimestamp = &metav1.Time{Time: time.Unix(1, 0)}
	w.doomed.Finalizers = []string{"foregroundDeletion"}
	w.doomedRS = &appsv1.ReplicaSet{ObjectMeta: meta("prod", "doomed-1", w.doomed)}

	terminating := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "leaving", UID: uidFor("leaving")}, Status: corev1.NamespaceStatus{Phase: corev1.NamespaceTerminating}}
	w.objects = append(w.objects,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod", UID: uidFor("prod")}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "dev", UID: uidFor("dev")}},
		terminating,
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: uidFor("n1")}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2", UID: uidFor("n2")}},
		w.deploy, w.rsNew, w.rsOld, w.rsBare, w.sts, w.ds, w.rc, w.cron, w.cronJob, w.job, w.doomed, w.doomedRS,
	)
	w.objects = append(w.objects, podsOf(3, "prod", "web-new", "n1", w.rsNew)...)
	w.objects = append(w.objects, podsOf(1, "prod", "web-old", "n2", w.rsOld)...)
	w.objects = append(w.objects, podsOf(2, "prod", "bare", "", w.rsBare)...)
	w.objects = append(w.objects, podsOf(2, "prod", "db", "n2", w.sts)...)
	w.objects = append(w.objects,
		podOf("prod", "agent-n1", "n1", w.ds, corev1.Toleration{Operator: corev1.TolerationOpExists}),
		podOf("prod", "agent-n2", "n2", w.ds, corev1.Toleration{Operator: corev1.TolerationOpExists}),
	)
	w.objects = append(w.objects, podsOf(1, "prod", "legacy", "n1", w.rc)...)
	w.objects = append(w.objects, podsOf(2, "prod", "nightly-1", "", w.cronJob)...)
	w.objects = append(w.objects, podsOf(1, "prod", "migrate", "", w.job)...)
	w.objects = append(w.objects, podsOf(1, "prod", "doomed-1", "", w.doomedRS)...)
	// A pod on its way out is never counted.
	leaving := podOf("prod", "web-new-gone", "n1", w.rsNew)
	leaving.DeletionTimestamp = &metav1.Time{Time: time.Unix(1, 0)}
	leaving.Finalizers = []string{"example.com/hold"}
	w.objects = append(w.objects, leaving)
	// Unowned pods in another namespace, one on each node.
	w.objects = append(w.objects, podOf("dev", "scratch-1", "n1", nil), podOf("dev", "scratch-2", "n2", nil), podOf("dev", "scratch-3", "", nil))
	w.objects = append(w.objects, podsOf(2, "leaving", "p", "n2", nil)...)
	// A pod bound to a node that no longer exists.
	w.objects = append(w.objects, podOf("dev", "stranded", "vanished", nil))
	return w
}

// startCounter starts a Counter on a fake clientset holding objs and waits
// for it to sync.
func startCounter(t *testing.T, cfg Config, objs ...runtime.Object) (*Counter, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset(objs...)
	cfg.Client = client
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("failed to build the counter: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c.Start(ctx)
	testwait.Until(t, "the counter syncs", c.HasSynced)
	return c, client
}

func fakeClient(objs ...runtime.Object) *fake.Clientset { return fake.NewClientset(objs...) }
