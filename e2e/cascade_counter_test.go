package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	createWebDeployment(t, c, ns, 6)
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

// TestCascadeDefaultPropagation pins cascade.Propagation to the API server:
// a delete without options orphans the pods of exactly the kinds it says.
// Admission sees the options as sent, so the webhook cannot learn the
// default from the request.
func TestCascadeDefaultPropagation(t *testing.T) {
	// Given a control plane whose garbage collector runs, and one workload of
	// each kind (their own controllers do not run) that owns one pod
	cp := framework.Start(t, framework.Options{ControllerManager: true})
	ctx := t.Context()
	c := cp.Client
	const ns = "propagation"
	cp.CreateNamespace(t, ns)
	sel := map[string]string{"app": "x"}
	tmpl := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel}, Spec: pod("", nil).Spec}
	jobTmpl := *tmpl.DeepCopy()
	jobTmpl.Spec.RestartPolicy = corev1.RestartPolicyNever
	labelSel := &metav1.LabelSelector{MatchLabels: sel}
	type workload struct {
		kind, apiVersion string
		create           func() (metav1.Object, error)
		remove           func() error
	}
	opts := metav1.DeleteOptions{} // no propagation: the server's default
	workloads := []workload{
		{cascade.KindDeployment, "apps/v1", func() (metav1.Object, error) {
			return c.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "deploy"}, Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](0), Selector: labelSel, Template: tmpl}}, metav1.CreateOptions{})
		}, func() error { return c.AppsV1().Deployments(ns).Delete(ctx, "deploy", opts) }},
		{cascade.KindStatefulSet, "apps/v1", func() (metav1.Object, error) {
			return c.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "sts"}, Spec: appsv1.StatefulSetSpec{Replicas: ptr.To[int32](0), Selector: labelSel, Template: tmpl}}, metav1.CreateOptions{})
		}, func() error { return c.AppsV1().StatefulSets(ns).Delete(ctx, "sts", opts) }},
		{cascade.KindDaemonSet, "apps/v1", func() (metav1.Object, error) {
			return c.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "ds"}, Spec: appsv1.DaemonSetSpec{Selector: labelSel, Template: tmpl}}, metav1.CreateOptions{})
		}, func() error { return c.AppsV1().DaemonSets(ns).Delete(ctx, "ds", opts) }},
		{cascade.KindCronJob, "batch/v1", func() (metav1.Object, error) {
			return c.BatchV1().CronJobs(ns).Create(ctx, &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: "cj"}, Spec: batchv1.CronJobSpec{Schedule: "0 0 1 1 *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: jobTmpl}}}}, metav1.CreateOptions{})
		}, func() error { return c.BatchV1().CronJobs(ns).Delete(ctx, "cj", opts) }},
		{cascade.KindJob, "batch/v1", func() (metav1.Object, error) {
			return c.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "job"}, Spec: batchv1.JobSpec{Template: jobTmpl}}, metav1.CreateOptions{})
		}, func() error { return c.BatchV1().Jobs(ns).Delete(ctx, "job", opts) }},
		{cascade.KindReplicationController, "v1", func() (metav1.Object, error) {
			return c.CoreV1().ReplicationControllers(ns).Create(ctx, &corev1.ReplicationController{ObjectMeta: metav1.ObjectMeta{Name: "rc"}, Spec: corev1.ReplicationControllerSpec{Replicas: ptr.To[int32](0), Selector: sel, Template: &tmpl}}, metav1.CreateOptions{})
		}, func() error { return c.CoreV1().ReplicationControllers(ns).Delete(ctx, "rc", opts) }},
	}
	for _, w := range workloads {
		obj, err := w.create()
		if err != nil {
			t.Fatalf("failed to create the %s: %v", w.kind, err)
		}
		p := pod("pod-of-"+obj.GetName(), nil)
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: w.apiVersion, Kind: w.kind, Name: obj.GetName(), UID: obj.GetUID(), Controller: ptr.To(true)}}
		if _, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("failed to create the pod of the %s: %v", w.kind, err)
		}
	}

	// When each workload is deleted without options
	for _, w := range workloads {
		if err := w.remove(); err != nil {
			t.Fatalf("failed to delete the %s: %v", w.kind, err)
		}
	}

	// Then the garbage collector removes or orphans each pod as
	// cascade.Propagation says
	removed := map[string]bool{}
	framework.Eventually(t, 60*time.Second, "every pod is removed or orphaned", func(ctx context.Context) (bool, error) {
		for _, w := range workloads {
			name := "pod-of-" + map[string]string{
				cascade.KindDeployment: "deploy", cascade.KindStatefulSet: "sts", cascade.KindDaemonSet: "ds",
				cascade.KindCronJob: "cj", cascade.KindJob: "job", cascade.KindReplicationController: "rc",
			}[w.kind]
			p, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				removed[w.kind] = true
			case err != nil:
				return false, err
			case len(p.OwnerReferences) == 0:
				removed[w.kind] = false
			default:
				return false, nil
			}
		}
		return true, nil
	})
	for _, w := range workloads {
		want := cascade.RemovesPods(cascade.Propagation(w.kind, &opts))
		if removed[w.kind] != want {
			t.Errorf("a %s delete without options removed its pod = %v; cascade.Propagation says %v", w.kind, removed[w.kind], want)
		}
	}
}
