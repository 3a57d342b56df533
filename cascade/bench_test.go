package cascade

import (
	"fmt"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// Run the figures with:
//
//	go test -run '^$' -bench BenchmarkCounter -benchtime 1x ./cascade/
//
// (BenchmarkCounterMemory* report B/pod; the query benchmarks ns/op.)

const benchPods = 100_000

// benchUID is a canonical random-looking UUID.
func benchUID(kind string, i int) types.UID {
	return types.UID(fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", i*2654435761%(1<<32), i%0xffff, i%0xfff, (i/7)%0xfff, i*40503))
}

// benchPod is a realistic full pod as the watch decodes it: a Deployment's
// pod with labels, annotations, one container, the two default NoExecute
// tolerations, a status.
func benchPod(i, namespaces, nodes, perOwner int) *corev1.Pod {
	owner := i / perOwner
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:       fmt.Sprintf("team-%03d", owner%namespaces),
			Name:            fmt.Sprintf("web-%d-7d9f8c6b5-%05x", owner, i),
			UID:             benchUID("pod", i),
			ResourceVersion: fmt.Sprint(1000 + i),
			Labels:          map[string]string{"app": fmt.Sprintf("web-%d", owner), "pod-template-hash": "7d9f8c6b5"},
			Annotations:     map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-11-30T00:00:00Z"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: KindReplicaSet, Name: fmt.Sprintf("web-%d-7d9f8c6b5", owner), UID: benchUID("rs", owner), Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}},
		},
		Spec: corev1.PodSpec{
			NodeName: fmt.Sprintf("node-%04d", i%nodes),
			Containers: []corev1.Container{{
				Name: "web", Image: "registry.example.com/web:1.2.3",
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")}},
				Env:       []corev1.EnvVar{{Name: "MODE", Value: "production"}},
			}},
			Tolerations: []corev1.Toleration{
				{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)},
				{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)},
			},
		},
		Status: corev1.PodStatus{Phase: corev1.PodPending, PodIP: "10.0.0.1", QOSClass: corev1.PodQOSBurstable},
	}
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkCounterMemoryPerPod measures the heap the compact pod store keeps
// per tracked pod at 100k pods (goal ≤ 300 B), each pod arriving as a full
// decoded pod and dropped after the store's transform, as from a watch. For
// comparison, the same pods in a client-go indexer after a TransformFunc that
// strips them to the same fields.
func BenchmarkCounterMemoryPerPod(b *testing.B) {
	b.Run("compact-store", func(b *testing.B) {
		for b.Loop() {
			before := heapInUse()
			s := newPodStore()
			for i := range benchPods {
				if err := s.Add(benchPod(i, 100, 1000, 10)); err != nil {
					b.Fatal(err)
				}
			}
			after := heapInUse()
			runtime.KeepAlive(s)
			b.ReportMetric(float64(after-before)/benchPods, "B/pod")
		}
	})
	b.Run("informer-indexer-with-strip-transform", func(b *testing.B) {
		for b.Loop() {
			before := heapInUse()
			idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{
				cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
				"node":               func(obj any) ([]string, error) { return []string{obj.(*corev1.Pod).Spec.NodeName}, nil },
				"owner": func(obj any) ([]string, error) {
					if ref := controllerOf(obj.(*corev1.Pod).OwnerReferences); ref != nil {
						return []string{string(ref.UID)}, nil
					}
					return nil, nil
				},
			})
			for i := range benchPods {
				if err := idx.Add(stripPodForIndexer(benchPod(i, 100, 1000, 10))); err != nil {
					b.Fatal(err)
				}
			}
			after := heapInUse()
			runtime.KeepAlive(idx)
			b.ReportMetric(float64(after-before)/benchPods, "B/pod")
		}
	})
}

// stripPodForIndexer is the TransformFunc a SharedInformer would need: the
// fields the counts read, in a *corev1.Pod.
func stripPodForIndexer(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, UID: p.UID, DeletionTimestamp: p.DeletionTimestamp}}
	if ref := controllerOf(p.OwnerReferences); ref != nil {
		out.OwnerReferences = []metav1.OwnerReference{{Kind: ref.Kind, Name: ref.Name, UID: ref.UID, Controller: ref.Controller}}
	}
	out.Spec.NodeName = p.Spec.NodeName
	for _, t := range p.Spec.Tolerations {
		if t.Effect == "" || t.Effect == corev1.TaintEffectNoExecute {
			out.Spec.Tolerations = append(out.Spec.Tolerations, t)
		}
	}
	return out
}

// benchCounter is a Counter over 100k pods: 10 namespaces of 10k pods, each
// namespace one owner, on 1000 nodes (100 pods a node).
func benchCounter(b *testing.B) *Counter {
	s := newPodStore()
	for i := range benchPods {
		if err := s.Add(benchPod(i, 10, 1000, 10_000)); err != nil {
			b.Fatal(err)
		}
	}
	return &Counter{pods: s}
}

// BenchmarkCounterQueries times the counts a root needs, on 100k pods:
// a namespace of 10k pods (goal ≤ 1 ms), an owner of 10k pods, a node of
// 100 pods, and a taint over that node's pods.
func BenchmarkCounterQueries(b *testing.B) {
	c := benchCounter(b)
	ns := "team-003"
	owner := benchUID("rs", 3)
	taint := corev1.Taint{Key: "example.com/broken", Effect: corev1.TaintEffectNoExecute}
	b.Run("PodsInNamespace-10k", func(b *testing.B) {
		for b.Loop() {
			if n := c.PodsInNamespace(ns); n != 10_000 {
				b.Fatalf("PodsInNamespace = %d", n)
			}
		}
	})
	b.Run("PodsOwnedBy-ReplicaSet-10k", func(b *testing.B) {
		ref := ObjectRef{Kind: KindReplicaSet, Namespace: ns, Name: "web-3-7d9f8c6b5", UID: owner}
		for b.Loop() {
			if r, err := c.PodsOwnedBy(ref); err != nil || r.Total != 10_000 {
				b.Fatalf("PodsOwnedBy = %d, %v", r.Total, err)
			}
		}
	})
	b.Run("PodsOnNode-100", func(b *testing.B) {
		for b.Loop() {
			if r := c.PodsOnNode("node-0042"); r.Total != 100 {
				b.Fatalf("PodsOnNode = %d", r.Total)
			}
		}
	})
	b.Run("PodsEvictedByTaint-100", func(b *testing.B) {
		for b.Loop() {
			if r := c.PodsEvictedByTaint("node-0042", taint); r.Total != 100 {
				b.Fatalf("PodsEvictedByTaint = %d", r.Total)
			}
		}
	})
}
