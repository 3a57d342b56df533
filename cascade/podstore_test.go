package cascade

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"pgregory.net/rapid"
)

var (
	propNamespaces  = []string{"a", "b", "c"}
	propNodes       = []string{"", "n1", "n2", "n3"}
	propOwners      = []types.UID{"", uidFor("rs-1"), uidFor("rs-2"), "not-a-uuid-owner"}
	propTolerations = [][]corev1.Toleration{
		nil,
		{{Operator: corev1.TolerationOpExists}},
		{{Key: "k", Operator: corev1.TolerationOpEqual, Value: "v", Effect: corev1.TaintEffectNoExecute}},
		{{Key: "k", Operator: corev1.TolerationOpExists, TolerationSeconds: ptr.To[int64](30)}},
		{{Key: "k", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
	}
	propTaints = []corev1.Taint{
		{Key: "k", Value: "v", Effect: corev1.TaintEffectNoExecute},
		{Key: "k", Value: "w", Effect: corev1.TaintEffectNoExecute},
		{Key: "other", Effect: corev1.TaintEffectNoExecute},
	}
)

func drawPod(rt *rapid.T) *corev1.Pod {
	ns := rapid.SampledFrom(propNamespaces).Draw(rt, "ns")
	name := fmt.Sprintf("p%d", rapid.IntRange(0, 15).Draw(rt, "name"))
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if rapid.Bool().Draw(rt, "canonicalUID") {
		p.UID = uidFor(fmt.Sprintf("%s/%s/%d", ns, name, rapid.IntRange(0, 3).Draw(rt, "incarnation")))
	} else {
		p.UID = types.UID("raw-" + ns + "-" + name)
	}
	if owner := rapid.SampledFrom(propOwners).Draw(rt, "owner"); owner != "" {
		p.OwnerReferences = []metav1.OwnerReference{{Kind: KindReplicaSet, Name: "rs", UID: owner, Controller: ptr.To(true)}}
	}
	p.Spec.NodeName = rapid.SampledFrom(propNodes).Draw(rt, "node")
	p.Spec.Tolerations = rapid.SampledFrom(propTolerations).Draw(rt, "tolerations")
	if rapid.IntRange(0, 4).Draw(rt, "deleting") == 0 {
		p.DeletionTimestamp = &metav1.Time{Time: time.Unix(1, 0)}
	}
	return p
}

// TestPodStoreIndexesMatchBruteForce is the property that every indexed
// count equals a count over all pods, after any sequence of watch events.
func TestPodStoreIndexesMatchBruteForce(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		s := newPodStore()
		c := &Counter{pods: s}
		model := map[string]*corev1.Pod{}
		key := func(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }
		steps := rapid.IntRange(1, 80).Draw(rt, "steps")
		for range steps {
			switch rapid.IntRange(0, 9).Draw(rt, "op") {
			case 0, 1, 2, 3:
				p := drawPod(rt)
				mustOK(rt, s.Add(p))
				model[key(p)] = p
			case 4, 5:
				p := drawPod(rt)
				mustOK(rt, s.Update(p))
				model[key(p)] = p
			case 6, 7:
				p := drawPod(rt)
				var obj any = p
				if rapid.Bool().Draw(rt, "tombstone") {
					obj = cache.DeletedFinalStateUnknown{Key: key(p), Obj: p}
				}
				mustOK(rt, s.Delete(obj))
				delete(model, key(p))
			case 8:
				n := rapid.IntRange(0, 10).Draw(rt, "replaceSize")
				model = map[string]*corev1.Pod{}
				list := []any{}
				for range n {
					p := drawPod(rt)
					model[key(p)] = p
				}
				for _, p := range model {
					list = append(list, p)
				}
				mustOK(rt, s.Replace(list, "1"))
			case 9:
				mustOK(rt, s.Resync())
			}
		}
		checkInvariants(rt, s)

		for _, ns := range propNamespaces {
			want := 0
			for _, p := range model {
				if p.Namespace == ns && p.DeletionTimestamp == nil {
					want++
				}
			}
			if got := c.PodsInNamespace(ns); got != want {
				rt.Fatalf("PodsInNamespace(%s) = %d, brute force %d", ns, got, want)
			}
		}
		for _, owner := range propOwners[1:] {
			want := 0
			for _, p := range model {
				if ref := controllerOf(p.OwnerReferences); ref != nil && ref.UID == owner && p.DeletionTimestamp == nil {
					want++
				}
			}
			got := 0
			if o := s.owners[owner]; o != nil {
				got = countLive(o.pods)
			}
			if got != want {
				rt.Fatalf("pods of owner %s = %d, brute force %d", owner, got, want)
			}
		}
		for _, node := range propNodes[1:] {
			want := 0
			for _, p := range model {
				if p.Spec.NodeName == node && p.DeletionTimestamp == nil {
					want++
				}
			}
			if got := c.PodsOnNode(node).Total; got != want {
				rt.Fatalf("PodsOnNode(%s) = %d, brute force %d", node, got, want)
			}
			for _, taint := range propTaints {
				want := 0
				for _, p := range model {
					if p.Spec.NodeName == node && p.DeletionTimestamp == nil {
						if e, _ := EvictionFor(p.Spec.Tolerations, &taint, false); e != Tolerated {
							want++
						}
					}
				}
				if got := c.PodsEvictedByTaint(node, taint).Total; got != want {
					rt.Fatalf("PodsEvictedByTaint(%s, %v) = %d, brute force %d", node, taint, got, want)
				}
			}
		}
		for k, p := range model {
			ns := s.namespaces[p.Namespace]
			if ns == nil || ns.pods[p.Name] == nil {
				rt.Fatalf("pod %s is missing from the store", k)
			}
			if got := s.uidOf(ns.pods[p.Name]); got != p.UID {
				rt.Fatalf("uid of %s = %q, want %q", k, got, p.UID)
			}
		}
	})
}

func mustOK(rt *rapid.T, err error) {
	if err != nil {
		rt.Fatalf("store operation failed: %v", err)
	}
}

// checkInvariants verifies the index positions, that no empty index entry
// lingers, and the toleration reference counts.
func checkInvariants(rt *rapid.T, s *podStore) {
	tolRefs := map[*tolSet]int{}
	raw := 0
	for name, ns := range s.namespaces {
		if len(ns.pods) == 0 {
			rt.Fatalf("namespace %s is empty but indexed", name)
		}
		live := 0
		for _, p := range ns.pods {
			if !p.deleting() {
				live++
			}
			if p.owner != nil && p.owner.pods[p.ownerPos] != p {
				rt.Fatalf("pod %s has a stale owner position", p.name)
			}
			if p.node != nil && p.node.pods[p.nodePos] != p {
				rt.Fatalf("pod %s has a stale node position", p.name)
			}
			if p.tols != nil {
				tolRefs[p.tols]++
			}
			if p.flags&podRawUID != 0 {
				raw++
			}
		}
		if live != ns.live {
			rt.Fatalf("namespace %s live = %d, counted %d", name, ns.live, live)
		}
	}
	for uid, o := range s.owners {
		if len(o.pods) == 0 {
			rt.Fatalf("owner %s is empty but indexed", uid)
		}
		if n := countLive(o.pods); n != o.live {
			rt.Fatalf("owner %s live = %d, counted %d", uid, o.live, n)
		}
	}
	for name, n := range s.nodes {
		if len(n.pods) == 0 {
			rt.Fatalf("node %s is empty but indexed", name)
		}
	}
	if len(tolRefs) != len(s.tols) {
		rt.Fatalf("%d toleration sets are interned, %d are used", len(s.tols), len(tolRefs))
	}
	for ts, n := range tolRefs {
		if ts.refs != n {
			rt.Fatalf("toleration set %q has refs %d, used by %d", ts.key, ts.refs, n)
		}
	}
	if raw != len(s.rawUIDs) {
		rt.Fatalf("%d pods have raw UIDs, the side map holds %d", raw, len(s.rawUIDs))
	}
}

func TestUIDPacking(t *testing.T) {
	for _, tc := range []struct {
		name   string
		uid    types.UID
		packed bool
	}{
		{name: "a canonical lower-case UUID packs", uid: "0d7c4a8e-5f4b-4a43-9d2b-8a3c1f6e7b90", packed: true},
		{name: "an upper-case UUID stays raw so it round-trips exactly", uid: "0D7C4A8E-5F4B-4A43-9D2B-8A3C1F6E7B90"},
		{name: "a short UID stays raw", uid: "uid-1"},
		{name: "an empty UID stays raw", uid: ""},
		{name: "non-hex digits stay raw", uid: "zd7c4a8e-5f4b-4a43-9d2b-8a3c1f6e7b90"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, ok := parseUID(tc.uid)
			if ok != tc.packed {
				t.Fatalf("parseUID(%q) packed = %v, want %v", tc.uid, ok, tc.packed)
			}
			if ok && formatUID(b) != tc.uid {
				t.Errorf("formatUID(parseUID(%q)) = %q", tc.uid, formatUID(b))
			}
		})
	}
}

func TestPodStoreRejectsOtherTypes(t *testing.T) {
	s := newPodStore()
	for name, err := range map[string]error{
		"Add":     s.Add(&corev1.Node{}),
		"Update":  s.Update("pod"),
		"Delete":  s.Delete(&corev1.Namespace{}),
		"Replace": s.Replace([]any{&corev1.Pod{}, &corev1.Node{}}, "1"),
	} {
		if err == nil {
			t.Errorf("%s of a non-pod succeeded", name)
		}
	}
	if s.hasSynced() {
		t.Error("a failed Replace marked the store synced")
	}
}

func countLive(pods []*podRec) int {
	n := 0
	for _, p := range pods {
		if !p.deleting() {
			n++
		}
	}
	return n
}
