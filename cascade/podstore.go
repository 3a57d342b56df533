package cascade

import (
	"encoding/hex"
	"fmt"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// podRec is all the counter keeps of a pod. Its fields are ordered to pack
// into 80 bytes; the name is the only other allocation.
type podRec struct {
	name     string
	ns       *nsPods
	owner    *ownerPods // controller owner; nil when none
	node     *nodePods  // nil when not bound
	tols     *tolSet    // NoExecute tolerations; nil when none
	ownerPos int32
	nodePos  int32
	uid      [16]byte
	flags    uint8
}

const (
	podDeleting uint8 = 1 << iota // deletionTimestamp set
	podRawUID                     // UID is not a canonical UUID; see podStore.rawUIDs
)

func (p *podRec) deleting() bool { return p.flags&podDeleting != 0 }

type nsPods struct {
	name string
	live int // pods without a deletionTimestamp
	pods map[string]*podRec
}

type ownerPods struct {
	uid  types.UID
	kind string
	name string
	ns   string
	live int // pods without a deletionTimestamp
	pods []*podRec
}

type nodePods struct {
	name string
	pods []*podRec
}

// podStore is a cache.ReflectorStore that keeps pods as podRecs with indexes
// by namespace, controller owner UID and node. All methods are safe for
// concurrent use.
type podStore struct {
	mu         sync.RWMutex
	namespaces map[string]*nsPods
	owners     map[types.UID]*ownerPods
	nodes      map[string]*nodePods
	tols       map[string]*tolSet
	rawUIDs    map[*podRec]types.UID
	synced     bool
}

var _ cache.ReflectorStore = (*podStore)(nil)

func newPodStore() *podStore {
	s := &podStore{}
	s.reset()
	return s
}

func (s *podStore) reset() {
	s.namespaces = map[string]*nsPods{}
	s.owners = map[types.UID]*ownerPods{}
	s.nodes = map[string]*nodePods{}
	s.tols = map[string]*tolSet{}
	s.rawUIDs = map[*podRec]types.UID{}
}

// Add implements cache.ReflectorStore.
func (s *podStore) Add(obj any) error { return s.upsert(obj) }

// Update implements cache.ReflectorStore.
func (s *podStore) Update(obj any) error { return s.upsert(obj) }

// Delete implements cache.ReflectorStore.
func (s *podStore) Delete(obj any) error {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return fmt.Errorf("failed to delete from the pod store: unexpected type %T", obj)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ns := s.namespaces[pod.Namespace]; ns != nil {
		if rec := ns.pods[pod.Name]; rec != nil {
			s.remove(rec)
		}
	}
	return nil
}

// Replace implements cache.ReflectorStore. The first Replace marks the store
// synced.
func (s *podStore) Replace(list []any, _ string) error {
	pods := make([]*corev1.Pod, 0, len(list))
	for _, obj := range list {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return fmt.Errorf("failed to replace the pod store: unexpected type %T", obj)
		}
		pods = append(pods, pod)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reset()
	for _, pod := range pods {
		s.upsertLocked(pod)
	}
	s.synced = true
	return nil
}

// Resync implements cache.ReflectorStore; there is nothing to resync.
func (s *podStore) Resync() error { return nil }

func (s *podStore) hasSynced() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.synced
}

func (s *podStore) upsert(obj any) error {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return fmt.Errorf("failed to add to the pod store: unexpected type %T", obj)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.upsertLocked(pod)
	return nil
}

// upsertLocked is the transform: it copies out of pod only what the counts
// read, so the decoded pod can be collected as soon as the reflector drops it.
func (s *podStore) upsertLocked(pod *corev1.Pod) {
	ns := s.namespaces[pod.Namespace]
	if ns == nil {
		ns = &nsPods{name: strings.Clone(pod.Namespace), pods: map[string]*podRec{}}
		s.namespaces[ns.name] = ns
	}
	rec := ns.pods[pod.Name]
	if rec == nil {
		rec = &podRec{name: strings.Clone(pod.Name), ns: ns}
		ns.pods[rec.name] = rec
	} else {
		s.unindex(rec)
	}
	rec.flags = 0
	if pod.DeletionTimestamp != nil {
		rec.flags |= podDeleting
	} else {
		ns.live++
	}
	if b, ok := parseUID(pod.UID); ok {
		rec.uid = b
		delete(s.rawUIDs, rec)
	} else {
		rec.uid = [16]byte{}
		rec.flags |= podRawUID
		s.rawUIDs[rec] = types.UID(strings.Clone(string(pod.UID)))
	}
	if ref := controllerOf(pod.OwnerReferences); ref != nil {
		o := s.owners[ref.UID]
		if o == nil {
			o = &ownerPods{uid: types.UID(strings.Clone(string(ref.UID))), kind: strings.Clone(ref.Kind), name: strings.Clone(ref.Name), ns: ns.name}
			s.owners[o.uid] = o
		}
		rec.owner, rec.ownerPos = o, int32(len(o.pods))
		o.pods = append(o.pods, rec)
		if !rec.deleting() {
			o.live++
		}
	}
	if pod.Spec.NodeName != "" {
		n := s.nodes[pod.Spec.NodeName]
		if n == nil {
			n = &nodePods{name: strings.Clone(pod.Spec.NodeName)}
			s.nodes[n.name] = n
		}
		rec.node, rec.nodePos = n, int32(len(n.pods))
		n.pods = append(n.pods, rec)
	}
	rec.tols = s.internTolerations(pod.Spec.Tolerations)
}

// unindex takes rec out of every index but the namespace's name map.
func (s *podStore) unindex(rec *podRec) {
	if !rec.deleting() {
		rec.ns.live--
	}
	if o := rec.owner; o != nil {
		if !rec.deleting() {
			o.live--
		}
		o.pods = swapRemove(o.pods, rec.ownerPos, func(p *podRec) *int32 { return &p.ownerPos })
		if len(o.pods) == 0 {
			delete(s.owners, o.uid)
		}
		rec.owner = nil
	}
	if n := rec.node; n != nil {
		n.pods = swapRemove(n.pods, rec.nodePos, func(p *podRec) *int32 { return &p.nodePos })
		if len(n.pods) == 0 {
			delete(s.nodes, n.name)
		}
		rec.node = nil
	}
	if t := rec.tols; t != nil {
		t.refs--
		if t.refs == 0 {
			delete(s.tols, t.key)
		}
		rec.tols = nil
	}
	if rec.flags&podRawUID != 0 {
		delete(s.rawUIDs, rec)
	}
}

// swapRemove removes pods[pos] in constant time: the last pod takes its
// place (posOf gives the field that holds a pod's index in this list, which
// is updated) and the list is one shorter. The order of pods is not kept.
func swapRemove(pods []*podRec, pos int32, posOf func(*podRec) *int32) []*podRec {
	last := pods[len(pods)-1]
	pods[pos], *posOf(last) = last, pos
	pods[len(pods)-1] = nil
	return pods[:len(pods)-1]
}

func (s *podStore) remove(rec *podRec) {
	s.unindex(rec)
	delete(rec.ns.pods, rec.name)
	if len(rec.ns.pods) == 0 {
		delete(s.namespaces, rec.ns.name)
	}
}

func (s *podStore) uidOf(rec *podRec) types.UID {
	if rec.flags&podRawUID != 0 {
		return s.rawUIDs[rec]
	}
	return formatUID(rec.uid)
}

// controllerOf returns the owner reference with controller=true, or nil.
func controllerOf(refs []metav1.OwnerReference) *metav1.OwnerReference {
	for i := range refs {
		if c := refs[i].Controller; c != nil && *c {
			return &refs[i]
		}
	}
	return nil
}

// parseUID packs a canonical UUID (8-4-4-4-12 hex digits) into 16 bytes.
func parseUID(uid types.UID) ([16]byte, bool) {
	var b [16]byte
	s := string(uid)
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return b, false
	}
	var digits [32]byte
	n := 0
	for i := 0; i < len(s); i++ {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			continue
		}
		c := s[i]
		if c >= 'A' && c <= 'F' { // formatUID writes lower case; keep upper case exact
			return b, false
		}
		digits[n] = c
		n++
	}
	if _, err := hex.Decode(b[:], digits[:]); err != nil {
		return [16]byte{}, false
	}
	return b, true
}

func formatUID(b [16]byte) types.UID {
	var buf [36]byte
	hex.Encode(buf[0:8], b[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], b[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], b[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], b[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:36], b[10:16])
	return types.UID(buf[:])
}
