package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata"
	"k8s.io/utils/ptr"

	"github.com/kubedefender/kubedefender/cascade"
	"github.com/kubedefender/kubedefender/e2e/framework"
)

// TestCascadeCounter checks the blast-radius counts against a real API
// server and controller manager: a Deployment's pods resolve through its
// ReplicaSet, a scale-down shows once the ReplicaSet controller acts, pods
// bound to a node are counted by node and taint, Services by namespace, and
// the pods of a Terminating namespace and of a vanished node are follow-ups.
// No kubelet or scheduler runs, so pods stay Pending.
func TestCascadeCounter(t *testing.T) {
	// Given a control plane with the deployment, replicaset, namespace and
	// garbage-collector controllers
	cp := framework.Start(t, framework.Options{ControllerManager: true})
	ctx := t.Context()
	c := cp.Client
	const ns = "cascade"
	cp.CreateNamespace(t, ns)

	// And a Deployment of 6 replicas
	labels := map[string]string{"app": "web"}
	deploy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](6),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: pod("", nil).Spec},
		},
	}
	if _, err := c.AppsV1().Deployments(ns).Create(ctx, deploy, metav1.CreateOptions{}); err != nil {
		t.Fatalf("failed to create the deployment: %v", err)
	}
	// And a node with three bound pods, one tolerating the taint to come
	if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("failed to create the node: %v", err)
	}
	taint := corev1.Taint{Key: "example.com/broken", Effect: corev1.TaintEffectNoExecute}
	for i := range 3 {
		p := pod(fmt.Sprintf("bound-%d", i), nil)
		p.Spec.NodeName = "node-a"
		if i == 0 {
			p.Spec.Tolerations = []corev1.Toleration{{Key: taint.Key, Operator: corev1.TolerationOpExists}}
		}
		if _, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("failed to create pod %s: %v", p.Name, err)
		}
	}
	// And a pod bound to a node that does not exist
	stranded := pod("stranded", nil)
	stranded.Spec.NodeName = "node-gone"
	if _, err := c.CoreV1().Pods(ns).Create(ctx, stranded, metav1.CreateOptions{}); err != nil {
		t.Fatalf("failed to create the stranded pod: %v", err)
	}
	// And two Services
	for _, name := range []string{"svc-a", "svc-b"} {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}
		if _, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatalf("failed to create service %s: %v", name, err)
		}
	}

	// When a counter watches the cluster
	md, err := metadata.NewForConfig(cp.Config)
	if err != nil {
		t.Fatalf("failed to build the metadata client: %v", err)
	}
	counter, err := cascade.New(cascade.Config{Client: c, Metadata: md})
	if err != nil {
		t.Fatalf("failed to build the counter: %v", err)
	}
	counter.Start(ctx)
	services := schema.GroupVersionResource{Version: "v1", Resource: "services"}
	if err := counter.Track(services); err != nil {
		t.Fatalf("failed to track services: %v", err)
	}
	framework.Eventually(t, 30*time.Second, "the counter syncs", func(context.Context) (bool, error) {
		return counter.HasSynced(), nil
	})

	webRef := cascade.ObjectRef{Kind: cascade.KindDeployment, Namespace: ns, Name: "web"}
	podsOfWeb := func() int {
		r, err := counter.PodsOwnedBy(webRef)
		if err != nil {
			return -1
		}
		return r.Total
	}

	// Then the namespace, the Deployment, the node and the taint count right
	framework.Eventually(t, 60*time.Second, "the deployment's 6 pods are counted through its ReplicaSet", func(context.Context) (bool, error) {
		return podsOfWeb() == 6, nil
	})
	if got := counter.PodsInNamespace(ns); got != 10 {
		t.Errorf("PodsInNamespace(%s) = %d, want 10 (6 of web, 3 bound, 1 stranded)", ns, got)
	}
	if got := counter.PodsOnNode("node-a"); got.Total != 3 || got.ByNamespace[ns] != 3 {
		t.Errorf("PodsOnNode(node-a) = %+v, want 3 in %s", got, ns)
	}
	if got := counter.PodsEvictedByTaint("node-a", taint); got.Total != 2 {
		t.Errorf("PodsEvictedByTaint(node-a) = %d, want 2", got.Total)
	}
	framework.Eventually(t, 30*time.Second, "the two services are counted", func(context.Context) (bool, error) {
		n, err := counter.ObjectsInNamespace(services, ns)
		return err == nil && n == 2, nil
	})
	if got, err := counter.Replicas(webRef); err != nil || got != 6 {
		t.Errorf("Replicas(web) = %d, %v; want 6", got, err)
	}

	// When the Deployment is scaled 6 → 4
	// (a merge patch: the deployment controller writes its status meanwhile)
	scale := []byte(`{"spec":{"replicas":4}}`)
	if _, err := c.AppsV1().Deployments(ns).Patch(ctx, "web", types.MergePatchType, scale, metav1.PatchOptions{}); err != nil {
		t.Fatalf("failed to scale the deployment: %v", err)
	}
	// Then the count follows the ReplicaSet controller's deletes
	framework.Eventually(t, 60*time.Second, "the deployment counts 4 pods", func(context.Context) (bool, error) {
		return podsOfWeb() == 4, nil
	})

	// Then a pod on a vanished node is a follow-up, a pod on a live one is not
	if r, ok := counter.FollowUp(cascade.FollowUpDelete, cascade.ObjectRef{Kind: cascade.KindPod, Namespace: ns, Name: "stranded"}); r != cascade.ReasonNodeGone {
		t.Errorf("FollowUp(stranded) = %q, %v; want %q", r, ok, cascade.ReasonNodeGone)
	}
	if r, ok := counter.FollowUp(cascade.FollowUpDelete, cascade.ObjectRef{Kind: cascade.KindPod, Namespace: ns, Name: "bound-1"}); ok {
		t.Errorf("FollowUp(bound-1) = %q, want no follow-up", r)
	}

	// When a namespace whose pod holds a finalizer is deleted
	const leaving = "cascade-leaving"
	cp.CreateNamespace(t, leaving)
	held := pod("held", nil)
	held.Finalizers = []string{"example.com/hold"}
	if _, err := c.CoreV1().Pods(leaving).Create(ctx, held, metav1.CreateOptions{}); err != nil {
		t.Fatalf("failed to create the held pod: %v", err)
	}
	t.Cleanup(func() {
		p, err := c.CoreV1().Pods(leaving).Get(context.Background(), "held", metav1.GetOptions{})
		if err == nil {
			p.Finalizers = nil
			_, _ = c.CoreV1().Pods(leaving).Update(context.Background(), p, metav1.UpdateOptions{})
		}
	})
	framework.Eventually(t, 30*time.Second, "the held pod is counted", func(context.Context) (bool, error) {
		return counter.PodsInNamespace(leaving) == 1, nil
	})
	if err := c.CoreV1().Namespaces().Delete(ctx, leaving, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("failed to delete namespace %s: %v", leaving, err)
	}
	// Then its pod's delete is a follow-up
	framework.Eventually(t, 30*time.Second, "the held pod's delete is a follow-up", func(context.Context) (bool, error) {
		r, _ := counter.FollowUp(cascade.FollowUpDelete, cascade.ObjectRef{Kind: cascade.KindPod, Namespace: leaving, Name: "held"})
		return r == cascade.ReasonNamespaceTerminating, nil
	})
}
