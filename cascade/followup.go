package cascade

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// RootOp is what a charged root did.
type RootOp int

const (
	// RootDelete: a delete of a namespace, a node or a workload with
	// Background or Foreground propagation.
	RootDelete RootOp = iota + 1
	// RootScaleDown: spec.replicas of a workload (or its scale) lowered.
	RootScaleDown
	// RootTaint: a NoExecute taint added to a node.
	RootTaint
)

// Root is a charged root request, as the webhook records it after admitting
// it with RecordRoot.
type Root struct {
	Op RootOp
	// Object is the namespace, node or workload the request changed.
	Object ObjectRef
	// Pods is, for RootScaleDown, the pods the root was charged for: that
	// many follow-up pod deletes under the workload are free.
	Pods int
	// Taint is, for RootTaint, the NoExecute taint that was added.
	Taint corev1.Taint
}

// Reason says why a request is a follow-up. Reasons are a small fixed set,
// fit for a metric label.
type Reason string

const (
	ReasonNamespaceTerminating Reason = "NamespaceTerminating"
	ReasonAlreadyDeleting      Reason = "AlreadyDeleting"
	ReasonOwnerDeleting        Reason = "OwnerDeleting"
	ReasonRootDeleted          Reason = "RootDeleted"
	ReasonScaledDown           Reason = "ScaledDown"
	ReasonOverReplicas         Reason = "OverReplicas"
	ReasonManagedByDeployment  Reason = "ManagedByDeployment"
	ReasonNodeGone             Reason = "NodeGone"
	ReasonNodeTainted          Reason = "NodeTainted"
)

// FollowUpOp is the kind of request FollowUp is asked about.
type FollowUpOp int

const (
	// FollowUpDelete: a delete or eviction of a pod, or a delete of a
	// workload.
	FollowUpDelete FollowUpOp = iota + 1
	// FollowUpScale: a scale-down of a workload.
	FollowUpScale
)

func memKeyNamespace(name string) string { return "ns/" + name }
func memKeyNode(name string) string      { return "node/" + name }
func memKeyUID(uid types.UID) string     { return "uid/" + string(uid) }

// RecordRoot remembers a charged root for Config.RootTTL so that its
// follow-ups are free. The webhook calls it once per admitted AtRoot root
// that was charged (not for dry runs). A workload delete also remembers the
// ReplicaSets or Jobs it resolves through, so their pods stay free after the
// garbage collector has removed them from the cache.
func (c *Counter) RecordRoot(r Root) error {
	switch r.Op {
	case RootDelete:
		switch r.Object.Kind {
		case KindNamespace:
			c.memory.record(memKeyNamespace(r.Object.Name), func(e *memEntry) { e.deleted = true })
			return nil
		case KindNode:
			c.memory.record(memKeyNode(r.Object.Name), func(e *memEntry) { e.deleted = true })
			return nil
		}
		uid, err := c.uidOf(r.Object)
		if err != nil {
			return fmt.Errorf("failed to record the delete of %s: %w", r.Object, err)
		}
		owners, err := c.podOwners(ObjectRef{Kind: r.Object.Kind, Namespace: r.Object.Namespace, Name: r.Object.Name, UID: uid})
		if err != nil {
			return fmt.Errorf("failed to record the delete of %s: %w", r.Object, err)
		}
		for _, u := range append(owners, uid) {
			c.memory.record(memKeyUID(u), func(e *memEntry) { e.deleted = true })
		}
		return nil
	case RootScaleDown:
		uid, err := c.uidOf(r.Object)
		if err != nil {
			return fmt.Errorf("failed to record the scale-down of %s: %w", r.Object, err)
		}
		c.memory.record(memKeyUID(uid), func(e *memEntry) { e.credit += r.Pods })
		return nil
	case RootTaint:
		if r.Taint.Effect != corev1.TaintEffectNoExecute {
			return fmt.Errorf("failed to record the taint of node %s: effect %q is not NoExecute", r.Object.Name, r.Taint.Effect)
		}
		c.memory.record(memKeyNode(r.Object.Name), func(e *memEntry) {
			for _, t := range e.taints {
				if t.MatchTaint(&r.Taint) && t.Value == r.Taint.Value {
					return
				}
			}
			e.taints = append(e.taints, corev1.Taint{Key: r.Taint.Key, Value: r.Taint.Value, Effect: r.Taint.Effect})
		})
		return nil
	default:
		return fmt.Errorf("failed to record a root: unknown op %d", r.Op)
	}
}

// FollowUp says whether a request is a follow-up of a root (see the package
// doc) and why. The webhook asks it once per admitted-or-not request it would
// otherwise charge; a pod follow-up of a scale-down spends one pod of that
// root's credit, so do not ask twice for one request. Before HasSynced it
// answers false (the caller judges PerObject anyway). ref.Kind is Pod or a
// workload kind.
func (c *Counter) FollowUp(op FollowUpOp, ref ObjectRef) (Reason, bool) {
	if !c.HasSynced() {
		return "", false
	}
	if c.namespaceGoing(ref.Namespace) {
		return ReasonNamespaceTerminating, true
	}
	if ref.Kind == KindPod {
		return c.podFollowUp(ref)
	}
	m, err := c.metaOfRef(ref)
	if err != nil {
		return "", false
	}
	if m.DeletionTimestamp != nil {
		return ReasonAlreadyDeleting, true
	}
	if c.memory.lookup(memKeyUID(m.UID), func(e *memEntry) bool { return e.deleted }) {
		return ReasonRootDeleted, true
	}
	var owner types.UID
	if ref := controllerOf(m.OwnerReferences); ref != nil {
		if op == FollowUpScale && ref.Kind == KindDeployment {
			return ReasonManagedByDeployment, true
		}
		owner = ref.UID
	}
	return c.chainFollowUp(owner, false)
}

func (c *Counter) namespaceGoing(ns string) bool {
	if ns == "" {
		return false
	}
	if obj, ok, _ := c.informers[KindNamespace].GetIndexer().GetByKey(ns); ok {
		if n, ok := obj.(*corev1.Namespace); ok && (n.DeletionTimestamp != nil || n.Status.Phase == corev1.NamespaceTerminating) {
			return true
		}
	}
	return c.memory.lookup(memKeyNamespace(ns), func(e *memEntry) bool { return e.deleted })
}

func (c *Counter) podFollowUp(ref ObjectRef) (Reason, bool) {
	c.pods.mu.RLock()
	var (
		found    bool
		deleting bool
		node     string
		owner    types.UID
		tols     []corev1.Toleration
	)
	if ns := c.pods.namespaces[ref.Namespace]; ns != nil {
		if p := ns.pods[ref.Name]; p != nil {
			found, deleting = true, p.deleting()
			if p.node != nil {
				node = p.node.name
			}
			if p.owner != nil {
				owner = p.owner.uid
			}
			if p.tols != nil {
				tols = p.tols.list
			}
		}
	}
	c.pods.mu.RUnlock()
	if !found {
		return "", false
	}
	if deleting {
		return ReasonAlreadyDeleting, true
	}
	if node != "" {
		if r, ok := c.nodeFollowUp(node, tols); ok {
			return r, true
		}
	}
	if r, ok := c.chainFollowUp(owner, true); ok {
		return r, true
	}
	if c.overReplicas(owner) {
		return ReasonOverReplicas, true
	}
	return "", false
}

// overReplicas reports whether the ReplicaSet, StatefulSet or
// ReplicationController owner has more live pods than its spec.replicas: its
// controller is deleting the surplus (after a charged scale-down, or in a
// Deployment rollout, which maxUnavailable governs), so a pod delete there
// removes no more pods than will go anyway. It frees at most the surplus,
// less what the watch has not yet shown deleted.
func (c *Counter) overReplicas(owner types.UID) bool {
	if owner == "" {
		return false
	}
	obj := c.byUID(owner)
	if obj == nil {
		return false
	}
	replicas, ok := replicasOf(obj)
	if !ok {
		return false
	}
	c.pods.mu.RLock()
	defer c.pods.mu.RUnlock()
	o := c.pods.owners[owner]
	return o != nil && o.live > int(replicas)
}

func (c *Counter) nodeFollowUp(node string, tols []corev1.Toleration) (Reason, bool) {
	obj, ok, _ := c.informers[KindNode].GetIndexer().GetByKey(node)
	if !ok {
		return ReasonNodeGone, true
	}
	if n, ok := obj.(*corev1.Node); ok && n.DeletionTimestamp != nil {
		return ReasonNodeGone, true
	}
	var reason Reason
	c.memory.lookup(memKeyNode(node), func(e *memEntry) bool {
		if e.deleted {
			reason = ReasonNodeGone
			return true
		}
		for i := range e.taints {
			if ev, _ := EvictionFor(tols, &e.taints[i], c.cfg.TolerationComparisonOperators); ev != Tolerated {
				reason = ReasonNodeTainted
				return true
			}
		}
		return false
	})
	return reason, reason != ""
}

// maxChain bounds the controller chain walked up from an object (pod →
// ReplicaSet → Deployment is two steps).
const maxChain = 4

// chainFollowUp walks the controller chain from owner upwards. Deletion of
// any owner wins over a scale-down credit, so a doomed pod does not spend
// credit; the credit nearest the pod is spent first.
func (c *Counter) chainFollowUp(owner types.UID, spend bool) (Reason, bool) {
	var chain []types.UID
	for uid := owner; uid != "" && len(chain) < maxChain; {
		chain = append(chain, uid)
		if c.memory.lookup(memKeyUID(uid), func(e *memEntry) bool { return e.deleted }) {
			return ReasonRootDeleted, true
		}
		obj := c.byUID(uid)
		if obj == nil {
			break
		}
		m, err := metaOf(obj)
		if err != nil {
			break
		}
		if m.DeletionTimestamp != nil {
			return ReasonOwnerDeleting, true
		}
		uid = ""
		if ref := controllerOf(m.OwnerReferences); ref != nil {
			uid = ref.UID
		}
	}
	if !spend {
		return "", false
	}
	for _, uid := range chain {
		if c.memory.lookup(memKeyUID(uid), func(e *memEntry) bool {
			if e.credit > 0 {
				e.credit--
				return true
			}
			return false
		}) {
			return ReasonScaledDown, true
		}
	}
	return "", false
}

var ownerKinds = []string{KindReplicaSet, KindJob, KindStatefulSet, KindDaemonSet, KindReplicationController, KindDeployment, KindCronJob}

// byUID finds a cached workload by UID.
func (c *Counter) byUID(uid types.UID) any {
	for _, k := range ownerKinds {
		objs, err := c.informers[k].GetIndexer().ByIndex(byUID, string(uid))
		if err == nil && len(objs) > 0 {
			return objs[0]
		}
	}
	return nil
}
