package app

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/kubedefender/kubedefender/cascade"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/webhook"
)

// cascades holds the cascade counter of the AtRoot budgets (issue 11). The
// counter is built and started when the running policy first has an AtRoot
// budget (at startup or on a reload), from the kube config; until then, and
// until its watches have synced, the webhook judges AtRoot budgets as
// PerObject and /readyz is false.
type cascades struct {
	kube *rest.Config
	log  *slog.Logger

	counter atomic.Pointer[cascade.Counter]
	policy  atomic.Pointer[policy.Compiled]

	mu      sync.Mutex
	ctx     context.Context // set by run
	pending bool            // an AtRoot policy arrived before run
	mapper  *restmapper.DeferredDiscoveryRESTMapper
}

var _ webhook.Cascades = (*cascades)(nil)

func newCascades(kube *rest.Config, log *slog.Logger, p *policy.Compiled) *cascades {
	c := &cascades{kube: kube, log: log}
	c.setPolicy(p)
	return c
}

// setPolicy follows the running policy: one with an AtRoot budget builds and
// starts the counter (once) and tracks the resources its budgets name.
func (c *cascades) setPolicy(p *policy.Compiled) {
	c.policy.Store(p)
	if !webhook.HasAtRoot(p) {
		return
	}
	if c.kube == nil {
		c.log.Warn("the policy has AtRoot budgets but there is no --kubeconfig and no in-cluster config: they judge as PerObject")
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil {
		c.pending = true
		return
	}
	c.startLocked(p)
}

func (c *cascades) startLocked(p *policy.Compiled) {
	ctr := c.counter.Load()
	if ctr == nil {
		kc := rest.CopyConfig(c.kube)
		// Pods decode far cheaper from protobuf.
		kc.ContentType = "application/vnd.kubernetes.protobuf"
		kc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
		kube, err := kubernetes.NewForConfig(kc)
		if err != nil {
			c.log.Error("failed to build the cascade counter's client: AtRoot budgets judge as PerObject", "err", err)
			return
		}
		md, err := metadata.NewForConfig(c.kube)
		if err != nil {
			c.log.Error("failed to build the cascade counter's metadata client: AtRoot budgets judge as PerObject", "err", err)
			return
		}
		ctr, err = cascade.New(cascade.Config{Client: kube, Metadata: md})
		if err != nil {
			c.log.Error("failed to build the cascade counter: AtRoot budgets judge as PerObject", "err", err)
			return
		}
		c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(kube.Discovery()))
		ctr.Start(c.ctx)
		c.counter.Store(ctr)
		c.log.Info("cascade counter started for the AtRoot budgets")
	}
	var gvrs []schema.GroupVersionResource
	for _, gr := range webhook.AtRootResources(p) {
		if gvr, ok := c.resolveLocked(gr); ok {
			gvrs = append(gvrs, gvr)
		}
	}
	if err := ctr.Track(gvrs...); err != nil {
		c.log.Warn("failed to watch a resource an AtRoot budget names: namespace deletes do not count it", "err", err)
	}
}

// run holds the context the counter's watches run under.
func (c *cascades) run(ctx context.Context) error {
	c.start(ctx)
	<-ctx.Done()
	return nil
}

// start sets the context the counter's watches run under, and starts the
// counter if the policy already asks for it.
func (c *cascades) start(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ctx = ctx
	if c.pending {
		c.startLocked(c.policy.Load())
	}
}

// resolve maps a resource an AtRoot budget names to the version served.
func (c *cascades) resolve(gr schema.GroupResource) (schema.GroupVersionResource, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.resolveLocked(gr)
}

func (c *cascades) resolveLocked(gr schema.GroupResource) (schema.GroupVersionResource, bool) {
	if c.mapper == nil {
		return schema.GroupVersionResource{}, false
	}
	gvr, err := c.mapper.ResourceFor(gr.WithVersion(""))
	if err != nil {
		c.mapper.Reset() // a resource installed since the last discovery
		if gvr, err = c.mapper.ResourceFor(gr.WithVersion("")); err != nil {
			c.log.Warn("failed to resolve a resource an AtRoot budget names: namespace deletes do not count it", "resource", gr.String(), "err", err)
			return schema.GroupVersionResource{}, false
		}
	}
	return gvr, true
}

// ready is false while the running policy has AtRoot budgets and the
// counter has not synced (or could not be built).
func (c *cascades) ready() bool {
	if !webhook.HasAtRoot(c.policy.Load()) || c.kube == nil {
		return true
	}
	return c.HasSynced()
}

// readyz wraps next: not ready until the cascade counts have synced.
func (c *cascades) readyz(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !c.ready() {
			http.Error(w, "cascade counts for the AtRoot budgets have not synced yet", http.StatusServiceUnavailable)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// The webhook.Cascades methods delegate to the counter once it exists; the
// webhook asks nothing else before HasSynced is true.

func (c *cascades) HasSynced() bool {
	ctr := c.counter.Load()
	return ctr != nil && ctr.HasSynced()
}

func (c *cascades) PodsInNamespace(ns string) int { return c.counter.Load().PodsInNamespace(ns) }

func (c *cascades) ObjectsInNamespace(gvr schema.GroupVersionResource, ns string) (int, error) {
	return c.counter.Load().ObjectsInNamespace(gvr, ns)
}

func (c *cascades) PodsOwnedBy(ref cascade.ObjectRef) (cascade.Removal, error) {
	return c.counter.Load().PodsOwnedBy(ref)
}

func (c *cascades) PodsOnNode(node string) cascade.Removal { return c.counter.Load().PodsOnNode(node) }

func (c *cascades) PodsEvictedByTaints(node string, taints []corev1.Taint) cascade.Removal {
	return c.counter.Load().PodsEvictedByTaints(node, taints)
}

func (c *cascades) Replicas(ref cascade.ObjectRef) (int32, error) {
	return c.counter.Load().Replicas(ref)
}

func (c *cascades) RecordRoot(r cascade.Root) error { return c.counter.Load().RecordRoot(r) }

func (c *cascades) FollowUp(op cascade.FollowUpOp, ref cascade.ObjectRef) (cascade.Reason, bool) {
	return c.counter.Load().FollowUp(op, ref)
}
