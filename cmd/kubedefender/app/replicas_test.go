package app

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

const replicaTestNS = "kubedefender-system"

func owned(kind, name string) []metav1.OwnerReference {
	return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, UID: types.UID("u-" + name), Controller: ptr.To(true)}}
}

// deploymentObjects are a Deployment with the given replicas, its ReplicaSet
// and the pod "kd-1" it runs.
func deploymentObjects(replicas int32) []runtime.Object {
	return []runtime.Object{
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "kubedefender", Namespace: replicaTestNS}, Spec: appsv1.DeploymentSpec{Replicas: ptr.To(replicas)}},
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "kubedefender-abc", Namespace: replicaTestNS, OwnerReferences: owned("Deployment", "kubedefender")},
			Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To(replicas)}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "kd-1", Namespace: replicaTestNS, OwnerReferences: owned("ReplicaSet", "kubedefender-abc")}},
	}
}

func TestMemoryStoreWarnsAboutOtherReplicas(t *testing.T) {
	cases := []struct {
		name    string
		objects []runtime.Object
		want    []string // log lines, in order, by their start
		notWant string
	}{
		{name: "a Deployment of two replicas is warned about, with the count",
			objects: deploymentObjects(2), want: []string{`level=WARN msg="other replicas run on a memory store`, `workload=Deployment/kubedefender replicas=2`}},
		{name: "a Deployment of one replica is not, and says so once", objects: deploymentObjects(1),
			want: []string{`msg="one replica: the memory store's counters are the cluster's" workload=Deployment/kubedefender replicas=1`}, notWant: "level=WARN"},
		{name: "a StatefulSet of three replicas is warned about",
			objects: []runtime.Object{
				&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "kd", Namespace: replicaTestNS}, Spec: appsv1.StatefulSetSpec{Replicas: ptr.To[int32](3)}},
				&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "kd-1", Namespace: replicaTestNS, OwnerReferences: owned("StatefulSet", "kd")}},
			},
			want: []string{"workload=StatefulSet/kd replicas=3"}},
		{name: "a pod that cannot be read is reported once at info, without a warning",
			objects: nil, want: []string{`level=INFO msg="cannot tell whether other replicas run beside this memory store"`}, notWant: "level=WARN"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			c := &replicaChecker{client: fake.NewClientset(tc.objects...), namespace: replicaTestNS, pod: "kd-1",
				log: slog.New(slog.NewTextHandler(&buf, nil))}
			c.check(context.Background())
			c.check(context.Background()) // a second look at the same state logs nothing new
			out := buf.String()
			for _, w := range tc.want {
				if strings.Count(out, w) != 1 {
					t.Errorf("want %q once in the log:\n%s", w, out)
				}
			}
			if tc.notWant != "" && strings.Contains(out, tc.notWant) {
				t.Errorf("log has %q:\n%s", tc.notWant, out)
			}
		})
	}
}

func TestMemoryStoreNoticesAScaleUpAndDown(t *testing.T) {
	var buf bytes.Buffer
	client := fake.NewClientset(deploymentObjects(1)...)
	c := &replicaChecker{client: client, namespace: replicaTestNS, pod: "kd-1", log: slog.New(slog.NewTextHandler(&buf, nil))}
	ctx := context.Background()
	c.check(ctx)
	scale := func(n int32) {
		d, err := client.AppsV1().Deployments(replicaTestNS).Get(ctx, "kubedefender", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.Spec.Replicas = ptr.To(n)
		if _, err := client.AppsV1().Deployments(replicaTestNS).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.check(ctx)
	}
	scale(3)
	scale(1)
	out := buf.String()
	if !strings.Contains(out, "replicas=3") || !strings.Contains(out, "one replica again") || strings.Index(out, "replicas=3") > strings.Index(out, "one replica again") {
		t.Fatalf("want a warning at 3 replicas, then a note at 1:\n%s", out)
	}
}
