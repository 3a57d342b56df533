package cascade

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/kubedefender/kubedefender/internal/testwait"
)

func pod(ns, name string) ObjectRef { return ObjectRef{Kind: KindPod, Namespace: ns, Name: name} }

func TestFollowUp(t *testing.T) {
	type ask struct {
		op   FollowUpOp
		ref  ObjectRef
		want Reason // "" means not a follow-up
	}
	del := func(ref ObjectRef, want Reason) ask { return ask{op: FollowUpDelete, ref: ref, want: want} }
	n1Taint := corev1.Taint{Key: "example.com/broken", Effect: corev1.TaintEffectNoExecute}
	for _, tc := range []struct {
		name  string
		roots []Root
		asks  []ask
	}{
		{
			name: "with no charged roots only doomed objects are follow-ups",
			asks: []ask{
				del(pod("leaving", "p-0"), ReasonNamespaceTerminating),
				del(pod("prod", "web-new-gone"), ReasonAlreadyDeleting),
				del(pod("prod", "doomed-1-0"), ReasonOwnerDeleting),
				del(pod("dev", "stranded"), ReasonNodeGone),
				del(pod("dev", "scratch-3"), ""),
				del(pod("prod", "web-new-0"), ""),
				del(pod("prod", "not-in-cache"), ""),
				del(ObjectRef{Kind: KindDeployment, Namespace: "prod", Name: "doomed"}, ReasonAlreadyDeleting),
				del(ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "doomed-1"}, ReasonOwnerDeleting),
				del(ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "web-old"}, ""),
				{op: FollowUpScale, ref: ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "web-new"}, want: ReasonManagedByDeployment},
				{op: FollowUpScale, ref: ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "bare"}, want: ""},
				{op: FollowUpScale, ref: ObjectRef{Kind: KindStatefulSet, Namespace: "prod", Name: "db"}, want: ""},
			},
		},
		{
			name:  "a charged namespace delete frees its pods before the watch shows Terminating",
			roots: []Root{{Op: RootDelete, Object: ObjectRef{Kind: KindNamespace, Name: "dev"}}},
			asks: []ask{
				del(pod("dev", "scratch-3"), ReasonNamespaceTerminating),
				del(pod("prod", "web-new-0"), ""),
			},
		},
		{
			name:  "a charged Deployment delete frees its ReplicaSets and their pods",
			roots: []Root{{Op: RootDelete, Object: ObjectRef{Kind: KindDeployment, Namespace: "prod", Name: "web"}}},
			asks: []ask{
				del(ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "web-old"}, ReasonRootDeleted),
				del(pod("prod", "web-new-0"), ReasonRootDeleted),
				del(pod("prod", "web-old-0"), ReasonRootDeleted),
				del(pod("prod", "bare-0"), ""),
			},
		},
		{
			name:  "a charged CronJob delete frees its Jobs and their pods",
			roots: []Root{{Op: RootDelete, Object: ObjectRef{Kind: KindCronJob, Namespace: "prod", Name: "nightly"}}},
			asks: []ask{
				del(ObjectRef{Kind: KindJob, Namespace: "prod", Name: "nightly-1"}, ReasonRootDeleted),
				del(pod("prod", "nightly-1-1"), ReasonRootDeleted),
				del(pod("prod", "migrate-0"), ""),
			},
		},
		{
			name:  "a charged scale-down frees as many pod deletes as it paid for, no more",
			roots: []Root{{Op: RootScaleDown, Object: ObjectRef{Kind: KindStatefulSet, Namespace: "prod", Name: "db"}, Pods: 1}},
			asks: []ask{
				del(pod("prod", "db-1"), ReasonScaledDown),
				del(pod("prod", "db-0"), ""),
			},
		},
		{
			name:  "a Deployment scale-down's credit is spent by the pods of its ReplicaSets",
			roots: []Root{{Op: RootScaleDown, Object: ObjectRef{Kind: KindDeployment, Namespace: "prod", Name: "web"}, Pods: 2}},
			asks: []ask{
				{op: FollowUpScale, ref: ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "web-new"}, want: ReasonManagedByDeployment},
				del(pod("prod", "web-new-2"), ReasonScaledDown),
				del(pod("prod", "web-old-0"), ReasonScaledDown),
				del(pod("prod", "web-new-1"), ""),
			},
		},
		{
			name: "two scale-downs of one workload add up",
			roots: []Root{
				{Op: RootScaleDown, Object: ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "bare"}, Pods: 1},
				{Op: RootScaleDown, Object: ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "bare"}, Pods: 1},
			},
			asks: []ask{
				del(pod("prod", "bare-0"), ReasonScaledDown),
				del(pod("prod", "bare-1"), ReasonScaledDown),
			},
		},
		{
			name:  "a charged NoExecute taint frees the pods that do not tolerate it",
			roots: []Root{{Op: RootTaint, Object: ObjectRef{Kind: KindNode, Name: "n1"}, Taint: n1Taint}},
			asks: []ask{
				del(pod("prod", "legacy-0"), ReasonNodeTainted),
				del(pod("dev", "scratch-1"), ReasonNodeTainted),
				del(pod("prod", "agent-n1"), ""),
				del(pod("dev", "scratch-2"), ""),
			},
		},
		{
			name:  "a charged node delete frees its pods while the node is still cached",
			roots: []Root{{Op: RootDelete, Object: ObjectRef{Kind: KindNode, Name: "n2"}}},
			asks: []ask{
				del(pod("prod", "db-0"), ReasonNodeGone),
				del(pod("prod", "agent-n2"), ReasonNodeGone),
				del(pod("prod", "legacy-0"), ""),
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld()
			c, _ := startCounter(t, Config{}, w.objects...)
			for _, r := range tc.roots {
				if err := c.RecordRoot(r); err != nil {
					t.Fatalf("RecordRoot(%+v) failed: %v", r, err)
				}
			}
			for _, a := range tc.asks {
				got, ok := c.FollowUp(a.op, a.ref)
				if ok != (a.want != "") || got != a.want {
					t.Errorf("FollowUp(%s) = %q, %v; want %q", a.ref, got, ok, a.want)
				}
			}
		})
	}
}

func TestFollowUpAfterTheGarbageCollectorRemovedTheReplicaSet(t *testing.T) {
	// Given a charged Background delete of a Deployment
	w := newWorld()
	c, client := startCounter(t, Config{}, w.objects...)
	if err := c.RecordRoot(Root{Op: RootDelete, Object: ObjectRef{Kind: KindDeployment, Namespace: "prod", Name: "web"}}); err != nil {
		t.Fatal(err)
	}
	// When the garbage collector has deleted the Deployment and its ReplicaSets
	ctx := context.Background()
	for _, err := range []error{
		client.AppsV1().Deployments("prod").Delete(ctx, "web", metav1.DeleteOptions{}),
		client.AppsV1().ReplicaSets("prod").Delete(ctx, "web-new", metav1.DeleteOptions{}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	testwait.Until(t, "the ReplicaSet leaves the cache", func() bool {
		_, err := c.Replicas(ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "web-new"})
		return err != nil
	})
	// Then its pods' deletes are still follow-ups
	if r, ok := c.FollowUp(FollowUpDelete, pod("prod", "web-new-0")); r != ReasonRootDeleted {
		t.Errorf("FollowUp = %q, %v; want %q", r, ok, ReasonRootDeleted)
	}
}

func TestFollowUpSeesANamespaceTurnTerminating(t *testing.T) {
	w := newWorld()
	c, client := startCounter(t, Config{}, w.objects...)
	ns, err := client.CoreV1().Namespaces().Get(context.Background(), "dev", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Status.Phase = corev1.NamespaceTerminating
	if _, err := client.CoreV1().Namespaces().Update(context.Background(), ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the pod's delete becomes a follow-up", func() bool {
		r, _ := c.FollowUp(FollowUpDelete, pod("dev", "scratch-1"))
		return r == ReasonNamespaceTerminating
	})
}

func TestRecordRootRefusesWhatItCannotRemember(t *testing.T) {
	w := newWorld()
	c, _ := startCounter(t, Config{}, w.objects...)
	for _, tc := range []struct {
		name string
		root Root
	}{
		{name: "an unknown op", root: Root{Object: ObjectRef{Kind: KindNamespace, Name: "dev"}}},
		{name: "a taint that is not NoExecute", root: Root{Op: RootTaint, Object: ObjectRef{Kind: KindNode, Name: "n1"}, Taint: corev1.Taint{Key: "k", Effect: corev1.TaintEffectNoSchedule}}},
		{name: "a delete of a workload missing from the cache", root: Root{Op: RootDelete, Object: ObjectRef{Kind: KindDeployment, Namespace: "prod", Name: "missing"}}},
		{name: "a scale-down of a workload missing from the cache", root: Root{Op: RootScaleDown, Object: ObjectRef{Kind: KindStatefulSet, Namespace: "prod", Name: "missing"}, Pods: 1}},
		{name: "a delete of a kind that owns no pods", root: Root{Op: RootDelete, Object: ObjectRef{Kind: "Service", Namespace: "prod", Name: "web", UID: "u"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := c.RecordRoot(tc.root); err == nil {
				t.Errorf("RecordRoot(%+v) succeeded", tc.root)
			}
		})
	}
}

func TestRootMemoryIsBoundedAndForgets(t *testing.T) {
	now := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	nsRoot := func(name string) Root {
		return Root{Op: RootDelete, Object: ObjectRef{Kind: KindNamespace, Name: name}}
	}
	remembered := func(c *Counter, ns string) bool { return c.namespaceGoing(ns) }

	t.Run("a root is forgotten after the TTL", func(t *testing.T) {
		clk := clocktesting.NewFakePassiveClock(now)
		c, _ := startCounter(t, Config{Clock: clk, RootTTL: time.Minute})
		if err := c.RecordRoot(nsRoot("a")); err != nil {
			t.Fatal(err)
		}
		clk.SetTime(now.Add(59 * time.Second))
		if !remembered(c, "a") {
			t.Error("the root was forgotten before its TTL")
		}
		clk.SetTime(now.Add(time.Minute))
		if remembered(c, "a") {
			t.Error("the root was remembered after its TTL")
		}
		if n := c.memory.len(); n != 0 {
			t.Errorf("memory holds %d entries after every TTL passed, want 0", n)
		}
	})

	t.Run("when full the oldest root is forgotten first", func(t *testing.T) {
		clk := clocktesting.NewFakePassiveClock(now)
		c, _ := startCounter(t, Config{Clock: clk, MaxRoots: 2})
		for i, ns := range []string{"a", "b", "a", "c"} { // "a" is renewed, so "b" is the oldest
			clk.SetTime(now.Add(time.Duration(i) * time.Second))
			if err := c.RecordRoot(nsRoot(ns)); err != nil {
				t.Fatal(err)
			}
		}
		for ns, want := range map[string]bool{"a": true, "b": false, "c": true} {
			if got := remembered(c, ns); got != want {
				t.Errorf("remembered(%s) = %v, want %v", ns, got, want)
			}
		}
	})

	t.Run("many roots never hold more than the bound", func(t *testing.T) {
		clk := clocktesting.NewFakePassiveClock(now)
		c, _ := startCounter(t, Config{Clock: clk, MaxRoots: 16})
		for i := range 1000 {
			if err := c.RecordRoot(nsRoot(fmt.Sprintf("ns-%d", i%40))); err != nil {
				t.Fatal(err)
			}
			if n := c.memory.len(); n > 16 {
				t.Fatalf("memory holds %d entries, bound is 16", n)
			}
		}
		if q := len(c.memory.queue); q > 2*16+1 {
			t.Errorf("the expiry queue holds %d items, want at most %d", q, 2*16+1)
		}
	})
}

func TestQueriesAreSafeWhileTheWatchUpdates(t *testing.T) {
	w := newWorld()
	c, client := startCounter(t, Config{MaxRoots: 8}, w.objects...)
	ctx := context.Background()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			p := podOf("prod", fmt.Sprintf("churn-%d", i), "n1", w.rsNew)
			if _, err := client.CoreV1().Pods("prod").Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Errorf("failed to create pod: %v", err)
				return
			}
			if i%2 == 0 {
				if err := client.CoreV1().Pods("prod").Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
					t.Errorf("failed to delete pod: %v", err)
					return
				}
			}
		}
	}()
	for i := 0; ; i++ {
		select {
		case <-done:
			testwait.Until(t, "the churned pods are counted", func() bool { return c.PodsInNamespace("prod") == 15+100 })
			return
		default:
		}
		_ = c.PodsInNamespace("prod")
		_, _ = c.PodsOwnedBy(ObjectRef{Kind: KindDeployment, Namespace: "prod", Name: "web"})
		_ = c.PodsOnNode("n1")
		_ = c.PodsEvictedByTaint("n1", corev1.Taint{Key: "k", Effect: corev1.TaintEffectNoExecute})
		_ = c.RecordRoot(Root{Op: RootScaleDown, Object: ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "web-new"}, Pods: 1})
		_, _ = c.FollowUp(FollowUpDelete, pod("prod", fmt.Sprintf("churn-%d", i%200)))
	}
}

func TestFollowUpWhileAReplicaSetIsOverItsReplicas(t *testing.T) {
	// Given a Deployment whose controller scales its old ReplicaSet to zero
	// (a rollout, which no root is charged for)
	w := newWorld()
	c, client := startCounter(t, Config{}, w.objects...)
	rs := w.rsOld.DeepCopy()
	rs.Spec.Replicas = ptr.To[int32](0)
	if _, err := client.AppsV1().ReplicaSets("prod").Update(context.Background(), rs, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Then the ReplicaSet controller's delete of the surplus pod is free
	testwait.Until(t, "the old ReplicaSet's pod is over its replicas", func() bool {
		r, _ := c.FollowUp(FollowUpDelete, pod("prod", "web-old-0"))
		return r == ReasonOverReplicas
	})
	// And a pod of a ReplicaSet at its replicas is not
	if r, ok := c.FollowUp(FollowUpDelete, pod("prod", "web-new-0")); ok {
		t.Errorf("FollowUp(web-new-0) = %q, want no follow-up", r)
	}
	// When the surplus pod is gone
	if err := client.CoreV1().Pods("prod").Delete(context.Background(), "web-old-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Then nothing more is free: a new pod at the replicas is charged
	p := podOf("prod", "web-old-new", "", w.rsOld)
	if _, err := client.CoreV1().Pods("prod").Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rs.Spec.Replicas = ptr.To[int32](1)
	if _, err := client.AppsV1().ReplicaSets("prod").Update(context.Background(), rs, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the ReplicaSet is at its replicas again", func() bool {
		r, err := c.Replicas(ObjectRef{Kind: KindReplicaSet, Namespace: "prod", Name: "web-old"})
		info, found := c.Pod("prod", "web-old-new")
		_, oldGone := c.Pod("prod", "web-old-0")
		return err == nil && r == 1 && found && info.Controller.UID == w.rsOld.UID && !oldGone
	})
	if r, ok := c.FollowUp(FollowUpDelete, pod("prod", "web-old-new")); ok {
		t.Errorf("FollowUp(web-old-new) = %q, want no follow-up", r)
	}
}
