package cascade

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
)

// ErrNotSynced is the error of a count whose watches have not listed yet,
// checked with errors.Is: the caller judges the request PerObject (and does
// not log it). The queries' other errors (a kind the counter does not
// resolve, an object not in the cache) are only reported.
var ErrNotSynced = errors.New("cascade counts are not synced yet")

// The texts of the queries' other errors.
const (
	unknownKind = "kind is not a workload the counter resolves"
	notCached   = "object not found in the cache (it does not exist, or the watch has not shown it yet)"
)

// Defaults of Config.
const (
	DefaultRootTTL  = 10 * time.Minute
	DefaultMaxRoots = 4096
)

// Config configures a Counter.
type Config struct {
	// Client reads pods, workloads, namespaces and nodes. Required. A client
	// asking for protobuf (rest.Config.ContentType) decodes pods cheaper.
	Client kubernetes.Interface
	// Metadata reads other resources counted for namespace deletes; nil
	// disables ObjectsInNamespace.
	Metadata metadata.Interface
	// Clock dates charged roots; nil means the real clock.
	Clock clock.PassiveClock
	// RootTTL is how long a charged root's follow-ups stay free; 0 means
	// DefaultRootTTL.
	RootTTL time.Duration
	// MaxRoots bounds the memory of charged roots; 0 means DefaultMaxRoots.
	MaxRoots int
	// TolerationComparisonOperators says the cluster honours the Lt/Gt
	// toleration operators. Off, such tolerations match nothing, which can
	// only over-count evictions.
	TolerationComparisonOperators bool
}

// Counter answers how much a root request removes. Build it with New, start
// it once with Start; every method is safe for concurrent use.
type Counter struct {
	cfg     Config
	pods    *podStore
	factory informers.SharedInformerFactory
	// informers by kind, for the workloads, namespaces and nodes
	informers map[string]cache.SharedIndexInformer
	memory    *rootMemory

	mu      sync.Mutex
	ctx     context.Context // set by Start; runs the on-demand object watches
	objects map[schema.GroupVersionResource]*nsCountStore
}

// New builds a Counter; nothing is watched until Start.
func New(cfg Config) (*Counter, error) {
	if cfg.Client == nil {
		return nil, errors.New("failed to build the cascade counter: Config.Client is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.RootTTL <= 0 {
		cfg.RootTTL = DefaultRootTTL
	}
	if cfg.MaxRoots <= 0 {
		cfg.MaxRoots = DefaultMaxRoots
	}
	f := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithTransform(stripObject))
	c := &Counter{
		cfg:     cfg,
		pods:    newPodStore(),
		factory: f,
		informers: map[string]cache.SharedIndexInformer{
			KindDeployment:            f.Apps().V1().Deployments().Informer(),
			KindReplicaSet:            f.Apps().V1().ReplicaSets().Informer(),
			KindStatefulSet:           f.Apps().V1().StatefulSets().Informer(),
			KindDaemonSet:             f.Apps().V1().DaemonSets().Informer(),
			KindReplicationController: f.Core().V1().ReplicationControllers().Informer(),
			KindJob:                   f.Batch().V1().Jobs().Informer(),
			KindCronJob:               f.Batch().V1().CronJobs().Informer(),
			KindNamespace:             f.Core().V1().Namespaces().Informer(),
			KindNode:                  f.Core().V1().Nodes().Informer(),
		},
		memory:  newRootMemory(cfg.Clock, cfg.RootTTL, cfg.MaxRoots),
		objects: map[schema.GroupVersionResource]*nsCountStore{},
	}
	for kind, inf := range c.informers {
		if kind == KindNamespace || kind == KindNode {
			continue
		}
		if err := inf.AddIndexers(workloadIndexers); err != nil {
			return nil, fmt.Errorf("failed to index %s: %w", kind, err)
		}
	}
	return c, nil
}

// Start starts the watches; they stop when ctx is done. Call it once.
func (c *Counter) Start(ctx context.Context) {
	c.mu.Lock()
	c.ctx = ctx
	c.mu.Unlock()
	c.factory.Start(ctx.Done())
	pods := c.cfg.Client.CoreV1().Pods(metav1.NamespaceAll)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return pods.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return pods.Watch(ctx, o)
		},
	}
	// The wrapper lets the reflector see whether the client streams lists
	// (fake clients do not).
	r := cache.NewReflectorWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, c.cfg.Client), &corev1.Pod{}, c.pods, cache.ReflectorOptions{Name: "cascade-pods"})
	go r.RunWithContext(ctx)
}

// HasSynced reports whether every watch the pod counts depend on has listed
// once. Until it does, /readyz is false and AtRoot budgets judge PerObject.
// On-demand object watches (ObjectsInNamespace) report their own state.
func (c *Counter) HasSynced() bool {
	if !c.pods.hasSynced() {
		return false
	}
	for _, inf := range c.informers {
		if !inf.HasSynced() {
			return false
		}
	}
	return true
}

// Removal is what a root removes: pods (or objects) by namespace.
type Removal struct {
	Total       int
	ByNamespace map[string]int
}

func (r *Removal) add(ns string, n int) {
	if n == 0 {
		return
	}
	if r.ByNamespace == nil {
		r.ByNamespace = map[string]int{}
	}
	r.ByNamespace[ns] += n
	r.Total += n
}

// Namespaces returns the namespaces of r, sorted.
func (r Removal) Namespaces() []string {
	out := make([]string, 0, len(r.ByNamespace))
	for ns := range r.ByNamespace {
		out = append(out, ns)
	}
	sort.Strings(out)
	return out
}

// PodInfo is what the counter holds of one pod.
type PodInfo struct {
	Namespace, Name string
	UID             types.UID
	// Controller is the pod's controller owner; Kind is "" when it has none.
	Controller ObjectRef
	// Node is spec.nodeName; "" when the pod is not bound.
	Node string
	// Deleting is whether the pod carries a deletionTimestamp.
	Deleting bool
}

// Pod returns the cached pod namespace/name, for the requests that do not
// carry it (an eviction's object is the Eviction, not the pod).
func (c *Counter) Pod(namespace, name string) (PodInfo, bool) {
	c.pods.mu.RLock()
	defer c.pods.mu.RUnlock()
	ns := c.pods.namespaces[namespace]
	if ns == nil {
		return PodInfo{}, false
	}
	p := ns.pods[name]
	if p == nil {
		return PodInfo{}, false
	}
	info := PodInfo{Namespace: ns.name, Name: p.name, UID: c.pods.uidOf(p), Deleting: p.deleting()}
	if o := p.owner; o != nil {
		info.Controller = ObjectRef{Kind: o.kind, Namespace: o.ns, Name: o.name, UID: o.uid}
	}
	if p.node != nil {
		info.Node = p.node.name
	}
	return info, true
}

// PodsInNamespace returns the pods a delete of namespace ns removes: its pods
// not already being deleted. O(1).
func (c *Counter) PodsInNamespace(ns string) int {
	c.pods.mu.RLock()
	defer c.pods.mu.RUnlock()
	if n := c.pods.namespaces[ns]; n != nil {
		return n.live
	}
	return 0
}

// ObjectsInNamespace returns the objects of resource gvr in namespace ns that
// a delete of the namespace removes. The first call for a gvr starts its
// metadata-only watch (Track does it up front) and returns ErrNotSynced
// until that watch has listed.
//
// Pods are answered from the pod store (PodsInNamespace), never by a second
// watch.
func (c *Counter) ObjectsInNamespace(gvr schema.GroupVersionResource, ns string) (int, error) {
	if gvr.Group == "" && gvr.Resource == "pods" {
		if !c.pods.hasSynced() {
			return 0, fmt.Errorf("failed to count pods in namespace %s: %w", ns, ErrNotSynced)
		}
		return c.PodsInNamespace(ns), nil
	}
	s, err := c.track(gvr)
	if err != nil {
		return 0, err
	}
	n, synced := s.count(ns)
	if !synced {
		return 0, fmt.Errorf("failed to count %s in namespace %s: %w", gvr.String(), ns, ErrNotSynced)
	}
	return n, nil
}

// Track starts the metadata-only watches for the resources a policy's AtRoot
// budgets name, so that they have synced by the first namespace delete. It
// must be called after Start.
func (c *Counter) Track(gvrs ...schema.GroupVersionResource) error {
	for _, gvr := range gvrs {
		if gvr.Group == "" && gvr.Resource == "pods" {
			continue // the pod store counts them
		}
		if _, err := c.track(gvr); err != nil {
			return err
		}
	}
	return nil
}

func (c *Counter) track(gvr schema.GroupVersionResource) (*nsCountStore, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.objects[gvr]; s != nil {
		return s, nil
	}
	if c.cfg.Metadata == nil {
		return nil, fmt.Errorf("failed to watch %s: the counter has no metadata client", gvr.String())
	}
	if c.ctx == nil {
		return nil, fmt.Errorf("failed to watch %s: the counter is not started", gvr.String())
	}
	res := c.cfg.Metadata.Resource(gvr).Namespace(metav1.NamespaceAll)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return res.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return res.Watch(ctx, o)
		},
	}
	s := newNSCountStore()
	c.objects[gvr] = s
	r := cache.NewReflectorWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, c.cfg.Metadata), &metav1.PartialObjectMetadata{}, s, cache.ReflectorOptions{Name: "cascade-" + gvr.String()})
	go r.RunWithContext(c.ctx)
	return s, nil
}

// ObjectRef names an object by kind; UID is optional (when the caller has
// the object, e.g. an admission request's oldObject, it saves a lookup and
// pins the exact incarnation).
type ObjectRef struct {
	Kind            string
	Namespace, Name string
	UID             types.UID
}

func (r ObjectRef) String() string {
	if r.Namespace == "" {
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

// get returns the cached (stripped) object of kind by namespace/name.
func (c *Counter) get(kind, ns, name string) (any, error) {
	inf := c.informers[kind]
	if inf == nil || kind == KindNamespace || kind == KindNode {
		return nil, fmt.Errorf("failed to look up %s: %s", kind, unknownKind)
	}
	key := name
	if ns != "" {
		key = ns + "/" + name
	}
	obj, ok, err := inf.GetIndexer().GetByKey(key)
	if err != nil {
		return nil, fmt.Errorf("failed to look up %s %s: %w", kind, key, err)
	}
	if !ok {
		return nil, fmt.Errorf("failed to look up %s %s: %s", kind, key, notCached)
	}
	return obj, nil
}

// metaOfRef is the metadata of the object ref names, from the cache.
func (c *Counter) metaOfRef(ref ObjectRef) (*metav1.ObjectMeta, error) {
	obj, err := c.get(ref.Kind, ref.Namespace, ref.Name)
	if err != nil {
		return nil, err
	}
	return metaOf(obj)
}

// uidOf resolves ref's UID through the cache when the caller did not give it.
func (c *Counter) uidOf(ref ObjectRef) (types.UID, error) {
	if ref.UID != "" {
		return ref.UID, nil
	}
	m, err := c.metaOfRef(ref)
	if err != nil {
		return "", err
	}
	return m.UID, nil
}

// controlledBy returns the UIDs of the objects of kind whose controller is
// owner, through the controller-uid index. O(owned).
func (c *Counter) controlledBy(kind string, owner types.UID) []types.UID {
	objs, err := c.informers[kind].GetIndexer().ByIndex(byControllerUID, string(owner))
	if err != nil {
		return nil
	}
	out := make([]types.UID, 0, len(objs))
	for _, obj := range objs {
		if m, err := metaOf(obj); err == nil {
			out = append(out, m.UID)
		}
	}
	return out
}

// podOwners returns the UIDs whose pods a delete of the workload ref removes:
// the workload itself, and for a Deployment its ReplicaSets, for a CronJob its
// Jobs.
func (c *Counter) podOwners(ref ObjectRef) ([]types.UID, error) {
	switch ref.Kind {
	case KindDeployment, KindCronJob, KindReplicaSet, KindStatefulSet, KindDaemonSet, KindReplicationController, KindJob:
	default:
		return nil, fmt.Errorf("failed to resolve %s: %s", ref, unknownKind)
	}
	uid, err := c.uidOf(ref)
	if err != nil {
		return nil, err
	}
	switch ref.Kind {
	case KindDeployment:
		return c.controlledBy(KindReplicaSet, uid), nil
	case KindCronJob:
		return c.controlledBy(KindJob, uid), nil
	default:
		return []types.UID{uid}, nil
	}
}

// PodsOwnedBy returns the pods a Background or Foreground delete of the
// workload ref removes, through the controller ownerReference chain:
// Deployment → ReplicaSets → Pods, CronJob → Jobs → Pods, and StatefulSet,
// DaemonSet, ReplicationController, ReplicaSet, Job → Pods. An Orphan delete
// removes no pods; the caller reads the propagation policy and does not ask.
// O(owned ReplicaSets or Jobs). It fails when ref.UID is empty and the
// workload is not in the cache, and for other kinds.
func (c *Counter) PodsOwnedBy(ref ObjectRef) (Removal, error) {
	owners, err := c.podOwners(ref)
	if err != nil {
		return Removal{}, err
	}
	var r Removal
	c.pods.mu.RLock()
	defer c.pods.mu.RUnlock()
	for _, uid := range owners {
		o := c.pods.owners[uid]
		if o == nil {
			continue
		}
		r.add(o.ns, o.live)
	}
	return r, nil
}

// PodsOnNode returns the pods a delete of node removes: the pods bound to it
// (pod GC deletes them once the node is gone). O(pods on the node).
func (c *Counter) PodsOnNode(node string) Removal {
	var r Removal
	c.pods.mu.RLock()
	defer c.pods.mu.RUnlock()
	if n := c.pods.nodes[node]; n != nil {
		for _, p := range n.pods {
			if !p.deleting() {
				r.add(p.ns.name, 1)
			}
		}
	}
	return r
}

// PodsEvictedByTaint returns the pods bound to node that the taint manager
// evicts, now or after their tolerationSeconds, when taint is added (see
// EvictionFor). A taint that is not NoExecute evicts nothing. O(pods on the
// node).
func (c *Counter) PodsEvictedByTaint(node string, taint corev1.Taint) Removal {
	return c.PodsEvictedByTaints(node, []corev1.Taint{taint})
}

// PodsEvictedByTaints is PodsEvictedByTaint for an update that adds several
// taints at once: a pod is counted once if any of them evicts it. Use
// AddedNoExecuteTaints to get the taints a node update adds.
func (c *Counter) PodsEvictedByTaints(node string, taints []corev1.Taint) Removal {
	var r Removal
	c.pods.mu.RLock()
	defer c.pods.mu.RUnlock()
	n := c.pods.nodes[node]
	if n == nil || len(taints) == 0 {
		return r
	}
	// Pods share a few interned toleration lists: decide once per list.
	decided := map[*tolSet]bool{}
	for _, p := range n.pods {
		if p.deleting() {
			continue
		}
		evicted, ok := decided[p.tols]
		if !ok {
			var tols []corev1.Toleration
			if p.tols != nil {
				tols = p.tols.list
			}
			for i := range taints {
				if e, _ := EvictionFor(tols, &taints[i], c.cfg.TolerationComparisonOperators); e != Tolerated {
					evicted = true
					break
				}
			}
			decided[p.tols] = evicted
		}
		if evicted {
			r.add(p.ns.name, 1)
		}
	}
	return r
}

// AddedNoExecuteTaints returns the NoExecute taints in updated that old does
// not have (same key and value), the taints a node update adds and the
// taint manager will act on.
func AddedNoExecuteTaints(old, updated []corev1.Taint) []corev1.Taint {
	var out []corev1.Taint
	for _, t := range updated {
		if t.Effect != corev1.TaintEffectNoExecute {
			continue
		}
		had := false
		for _, o := range old {
			if o.MatchTaint(&t) && o.Value == t.Value {
				had = true
				break
			}
		}
		if !had {
			out = append(out, t)
		}
	}
	return out
}

// ScaleDown returns the pods a change of spec.replicas from old to new
// removes: old − new, never below zero. A rollout (same replicas, new
// template) is not a scale-down: maxUnavailable governs it.
func ScaleDown(old, new int32) int {
	if new >= old {
		return 0
	}
	return int(old) - int(new)
}

// Replicas returns the cached spec.replicas of a Deployment, ReplicaSet,
// StatefulSet or ReplicationController, for a scale subresource request
// whose old object the caller lacks.
func (c *Counter) Replicas(ref ObjectRef) (int32, error) {
	obj, err := c.get(ref.Kind, ref.Namespace, ref.Name)
	if err != nil {
		return 0, err
	}
	r, ok := replicasOf(obj)
	if !ok {
		return 0, fmt.Errorf("failed to read replicas of %s: %s", ref, unknownKind)
	}
	return r, nil
}
