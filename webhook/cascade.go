package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kubedefender/kubedefender/cascade"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// Cascades is what the webhook asks of a cascade counter to judge AtRoot
// budgets (issue 11); *cascade.Counter is one.
type Cascades interface {
	HasSynced() bool
	PodsInNamespace(ns string) int
	ObjectsInNamespace(gvr schema.GroupVersionResource, ns string) (int, error)
	PodsOwnedBy(ref cascade.ObjectRef) (cascade.Removal, error)
	PodsOnNode(node string) cascade.Removal
	PodsEvictedByTaints(node string, taints []corev1.Taint) cascade.Removal
	Replicas(ref cascade.ObjectRef) (int32, error)
	RecordRoot(r cascade.Root) error
	FollowUp(op cascade.FollowUpOp, ref cascade.ObjectRef) (cascade.Reason, bool)
}

var _ Cascades = (*cascade.Counter)(nil)

// cascadeWorkload is a workload whose delete or scale-down is a root.
type cascadeWorkload struct {
	group, resource, kind string
	scalable              bool
}

// cascadeWorkloads are the workloads the counter resolves to pods.
var cascadeWorkloads = []cascadeWorkload{
	{"apps", "deployments", cascade.KindDeployment, true},
	{"apps", "replicasets", cascade.KindReplicaSet, true},
	{"apps", "statefulsets", cascade.KindStatefulSet, true},
	{"apps", "daemonsets", cascade.KindDaemonSet, false},
	{"", "replicationcontrollers", cascade.KindReplicationController, true},
	{"batch", "jobs", cascade.KindJob, false},
	{"batch", "cronjobs", cascade.KindCronJob, false},
}

func workloadOf(group, resource string) (cascadeWorkload, bool) {
	for _, w := range cascadeWorkloads {
		if w.group == group && w.resource == resource {
			return w, true
		}
	}
	return cascadeWorkload{}, false
}

// HasAtRoot reports whether any budget of p has cascades: AtRoot.
func HasAtRoot(p *policy.Compiled) bool {
	if p == nil {
		return false
	}
	for i := range p.Budgets {
		if p.Budgets[i].Cascades == policy.CascadesAtRoot {
			return true
		}
	}
	return false
}

// AtRootResources returns the resources other than pods that p's AtRoot
// budgets name, as group and resource (wildcards left out: a namespace
// delete counts the resources a budget names, never every resource).
func AtRootResources(p *policy.Compiled) []schema.GroupResource {
	var out []schema.GroupResource
	seen := map[schema.GroupResource]bool{}
	for i := range p.Budgets {
		b := p.Budgets[i].Budget
		if b.Cascades != policy.CascadesAtRoot {
			continue
		}
		for _, r := range b.Match.Resources {
			g, res := splitResource(r)
			gr := schema.GroupResource{Group: g, Resource: res}
			if g == "*" || res == "*" || (g == "" && res == "pods") || seen[gr] {
				continue
			}
			seen[gr] = true
			out = append(out, gr)
		}
	}
	return out
}

// specFields is what the webhook reads of an object's spec: the replicas of
// a workload or its scale, the taints of a node. It never fails to decode:
// an object whose spec holds these fields with other types (a custom
// resource) leaves it zero.
type specFields struct {
	Replicas *int32
	Taints   []corev1.Taint
}

var (
	replicasKey = []byte(`"replicas"`)
	taintsKey   = []byte(`"taints"`)
)

func (s *specFields) UnmarshalJSON(data []byte) error {
	if !containsAny(data, replicasKey, taintsKey) {
		return nil
	}
	var p struct {
		Replicas *int32         `json:"replicas"`
		Taints   []corev1.Taint `json:"taints"`
	}
	if json.Unmarshal(data, &p) == nil {
		s.Replicas, s.Taints = p.Replicas, p.Taints
	}
	return nil
}

func containsAny(data []byte, keys ...[]byte) bool {
	for _, k := range keys {
		if bytes.Contains(data, k) {
			return true
		}
	}
	return false
}

// deleteOptions decodes a DELETE's options; nil when absent or unreadable.
func (r *request) deleteOptions() *metav1.DeleteOptions {
	if len(r.Options) == 0 || string(r.Options) == "null" {
		return nil
	}
	var o metav1.DeleteOptions
	if json.Unmarshal(r.Options, &o) != nil {
		return nil
	}
	return &o
}

// cascadeRoot is a root the webhook records once it is admitted.
type cascadeRoot []cascade.Root

// classify sets a.Removes for a root request and a.FollowUp for a follow-up
// one, when the running policy has AtRoot budgets and the counter has
// synced. It returns the roots to record once the request is admitted.
func (h *Handler) classify(req *request, a *limiter.Attributes) cascadeRoot {
	if h.cascades == nil || !HasAtRoot(h.engine.Policy()) {
		return nil
	}
	if !h.cascades.HasSynced() {
		if h.notSyncedLogged.CompareAndSwap(false, true) {
			h.log.Warn("cascade counts are not synced yet: AtRoot budgets judge as PerObject until they are")
		}
		return nil
	}
	kind, w := rootOf(a.Verb, req.Resource.Group, req.Resource.Resource, req.SubResource)
	switch kind {
	case namespaceDelete:
		return h.namespaceRoot(req, a)
	case nodeDelete:
		ref := cascade.ObjectRef{Kind: cascade.KindNode, Name: req.Name, UID: req.OldObject.Metadata.UID}
		setPods(a, h.cascades.PodsOnNode(req.Name))
		return cascadeRoot{{Op: cascade.RootDelete, Object: ref}}
	case nodeUpdate:
		added := cascade.AddedNoExecuteTaints(req.OldObject.Spec.Taints, req.Object.Spec.Taints)
		if len(added) == 0 {
			return nil
		}
		setPods(a, h.cascades.PodsEvictedByTaints(req.Name, added))
		ref := cascade.ObjectRef{Kind: cascade.KindNode, Name: req.Name}
		roots := make(cascadeRoot, 0, len(added))
		for _, t := range added {
			roots = append(roots, cascade.Root{Op: cascade.RootTaint, Object: ref, Taint: t})
		}
		return roots
	case podRemoval:
		if a.DryRun {
			return nil // asking would spend a scale-down's credit
		}
		ref := cascade.ObjectRef{Kind: cascade.KindPod, Namespace: req.Namespace, Name: req.Name}
		if a.Verb == "delete" {
			ref.UID = req.OldObject.Metadata.UID
		}
		if why, ok := h.cascades.FollowUp(cascade.FollowUpDelete, ref); ok {
			h.markFollowUp(a, req, "", why)
		}
		return nil
	case workloadDelete:
		ref := cascade.ObjectRef{Kind: w.kind, Namespace: req.Namespace, Name: req.Name, UID: req.OldObject.Metadata.UID}
		if why, ok := h.cascades.FollowUp(cascade.FollowUpDelete, ref); ok {
			h.markFollowUp(a, req, w.kind, why)
			return nil
		}
		opts := req.deleteOptions()
		prop := cascade.Propagation(w.kind, opts)
		if (opts == nil || (opts.PropagationPolicy == nil && opts.OrphanDependents == nil)) && cascade.HasOrphanFinalizer(req.OldObject.Metadata.Finalizers) { //nolint:staticcheck // the API server still honours orphanDependents
			prop = metav1.DeletePropagationOrphan
		}
		if !cascade.RemovesPods(prop) {
			return nil
		}
		r, err := h.cascades.PodsOwnedBy(ref)
		if err != nil {
			h.log.Warn("failed to count the pods of a workload delete; judged as PerObject", "kind", w.kind, "namespace", req.Namespace, "name", req.Name, "err", err)
			return nil
		}
		setPods(a, r)
		return cascadeRoot{{Op: cascade.RootDelete, Object: ref}}
	case workloadScale:
		ref := cascade.ObjectRef{Kind: w.kind, Namespace: req.Namespace, Name: req.Name}
		if req.SubResource == "" {
			ref.UID = req.OldObject.Metadata.UID
		}
		newR, oldR := req.Object.Spec.Replicas, req.OldObject.Spec.Replicas
		if req.SubResource == "scale" {
			// A Scale's spec.replicas is omitted when zero (omitempty on an
			// int32): kubectl scale --replicas=0 sends a Scale without it.
			var zero int32
			if newR == nil {
				newR = &zero
			}
			if oldR == nil && req.OldObject.Metadata.UID != "" {
				oldR = &zero
			}
		}
		if newR == nil {
			return nil
		}
		if oldR == nil {
			n, err := h.cascades.Replicas(ref)
			if err != nil {
				return nil
			}
			oldR = &n
		}
		n := cascade.ScaleDown(*oldR, *newR)
		if n == 0 {
			return nil
		}
		if !a.DryRun {
			if why, ok := h.cascades.FollowUp(cascade.FollowUpScale, ref); ok {
				h.markFollowUp(a, req, w.kind, why)
				return nil
			}
		}
		a.Removes = []limiter.Removal{{Resource: "pods", Namespace: req.Namespace, Count: int64(n)}}
		return cascadeRoot{{Op: cascade.RootScaleDown, Object: ref, Pods: n}}
	}
	return nil
}

// markFollowUp marks a as the follow-up of a charged root (why says why it
// is one) and logs it at debug level with the request's verb, the workload's
// kind (none for a pod's removal: kind is empty), namespace and name.
func (h *Handler) markFollowUp(a *limiter.Attributes, req *request, kind string, why cascade.Reason) {
	a.FollowUp = true
	if !h.debugging() {
		return
	}
	args := []any{"verb", a.Verb}
	if kind != "" {
		args = append(args, "kind", kind)
	}
	h.log.Debug("follow-up of a charged root", append(args, "namespace", req.Namespace, "name", req.Name, "why", why)...)
}

// namespaceRoot sets what a namespace delete removes: its pods and the
// objects of every other resource the AtRoot budgets name.
func (h *Handler) namespaceRoot(req *request, a *limiter.Attributes) cascadeRoot {
	ns := req.Name
	if n := h.cascades.PodsInNamespace(ns); n > 0 {
		a.Removes = append(a.Removes, limiter.Removal{Resource: "pods", Namespace: ns, Count: int64(n)})
	}
	if h.resolve != nil {
		for _, gr := range AtRootResources(h.engine.Policy()) {
			gvr, ok := h.resolve(gr)
			if !ok {
				continue
			}
			n, err := h.cascades.ObjectsInNamespace(gvr, ns)
			if err != nil {
				if !errors.Is(err, cascade.ErrNotSynced) {
					h.log.Warn("failed to count the objects a namespace delete removes", "resource", gr.String(), "namespace", ns, "err", err)
				}
				continue
			}
			if n > 0 {
				a.Removes = append(a.Removes, limiter.Removal{APIGroup: gr.Group, Resource: gr.Resource, Namespace: ns, Count: int64(n)})
			}
		}
	}
	return cascadeRoot{{Op: cascade.RootDelete, Object: cascade.ObjectRef{Kind: cascade.KindNamespace, Name: ns, UID: req.OldObject.Metadata.UID}}}
}

// setPods sets a.Removes to the pods r removes, one Removal per namespace.
func setPods(a *limiter.Attributes, r cascade.Removal) {
	for _, ns := range r.Namespaces() {
		if n := r.ByNamespace[ns]; n > 0 {
			a.Removes = append(a.Removes, limiter.Removal{Resource: "pods", Namespace: ns, Count: int64(n)})
		}
	}
}

// record remembers admitted roots so that their follow-ups are free.
func (h *Handler) record(roots cascadeRoot) {
	for _, r := range roots {
		if err := h.cascades.RecordRoot(r); err != nil {
			h.log.Warn("failed to record a cascade root; its follow-ups will be charged", "object", r.Object.String(), "err", fmt.Sprint(err))
		}
	}
}

// rootKind is what a request is to AtRoot budgets, by its verb and resource
// alone: a root (what it removes is counted and charged up front), a pod's
// removal (which may be a follow-up of a charged root), or neither.
type rootKind int

const (
	notRoot rootKind = iota
	namespaceDelete
	nodeDelete
	// nodeUpdate is a root when it adds NoExecute taints.
	nodeUpdate
	podRemoval
	workloadDelete
	// workloadScale is a root when it lowers the replicas.
	workloadScale
)

// rootOf classifies a request for classify and CascadeRoot; w is the
// workload of workloadDelete and workloadScale.
func rootOf(verb, group, resource, sub string) (kind rootKind, w cascadeWorkload) {
	switch {
	case verb == "delete" && group == "" && resource == "namespaces" && sub == "":
		return namespaceDelete, w
	case verb == "delete" && group == "" && resource == "nodes" && sub == "":
		return nodeDelete, w
	case verb == "update" && group == "" && resource == "nodes" && sub == "":
		return nodeUpdate, w
	case (verb == "delete" || verb == "evict") && group == "" && resource == "pods":
		return podRemoval, w
	}
	w, ok := workloadOf(group, resource)
	switch {
	case !ok:
	case verb == "delete" && sub == "":
		return workloadDelete, w
	case verb == "update" && w.scalable && (sub == "" || sub == "scale"):
		return workloadScale, w
	}
	return notRoot, cascadeWorkload{}
}

// rootRemoves says what each kind of root removes.
var rootRemoves = map[rootKind]string{
	namespaceDelete: "the objects in the namespace (its pods, and what AtRoot budgets name)",
	nodeDelete:      "the pods bound to the node",
	nodeUpdate:      "the pods that do not tolerate a NoExecute taint the update adds",
	workloadDelete:  "the pods it owns, unless the delete orphans them",
	workloadScale:   "the pods a lower replica count removes (old minus new)",
}

// CascadeRoot says what a request removes when AtRoot budgets judge it as a
// root, or "" when it is no root: the cases classify counts (rootOf).
// `policy explain` shows it, since it cannot count offline what the webhook
// counts from the cluster.
func CascadeRoot(verb, group, resource, subresource string) string {
	kind, _ := rootOf(verb, group, resource, subresource)
	return rootRemoves[kind]
}
