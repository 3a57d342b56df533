package override

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// Engine is what the controller needs of the limiter engine.
type Engine interface {
	Policy() *policy.Compiled
	SetOverrides([]limiter.Override)
	ResetBreakers(ctx context.Context, o *limiter.Override) error
}

// ControllerConfig configures a Controller.
type ControllerConfig struct {
	// Client reads Overrides.
	Client dynamic.Interface
	// Events writes Events about Overrides; nil writes none.
	Events corev1client.EventsGetter
	// Namespace, when set, is the one namespace whose Overrides count. Empty
	// (what serve uses) follows the running policy's breakGlass.namespace:
	// when a reload changes it, the watch moves within Tick, and the
	// overrides of the old namespace stop applying.
	Namespace string
	Engine    Engine
	// Replica names this process in Events (e.g. the pod name).
	Replica string
	// Clock judges expiry; nil is real time.
	Clock  clock.WithTicker
	Logger *slog.Logger
	// Registerer takes the override metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Tick is how often expiry is checked without an event; default 1s.
	Tick time.Duration
	// SharedStore says every replica judges on one store (Redis): a
	// resetBreaker then runs once for the whole deployment, recorded in the
	// annotation ResetAnnotation, so a replica that starts later (a rolling
	// update) does not reset the shared counters again. With per-replica
	// memory stores every replica resets its own.
	SharedStore bool
}

// ResetAnnotation records on an Override that its resetBreaker has run
// against the shared store (value: when, and by which replica).
const ResetAnnotation = "kubedefender.io/breakers-reset"

// Phases of an override as this controller sees it.
const (
	PhaseActive   = "Active"
	PhaseExpired  = "Expired"
	PhaseRejected = "Rejected"
	PhaseRevoked  = "Revoked"
)

// Controller applies the Overrides of one namespace to an engine.
type Controller struct {
	cfg         ControllerConfig
	log         *slog.Logger
	active      prometheus.Gauge
	transitions *prometheus.CounterVec
	kick        chan struct{}

	mu   sync.Mutex
	seen map[types.UID]seenOverride
	// store lists the Overrides of watching once its informer has synced;
	// nil before. While a moved watch syncs, store is nil and moving is
	// set: no override applies (the old namespace's no longer count).
	store    cache.Store
	watching string
	moving   bool

	// creator is the last CreatorCheck result (nil before the first).
	creator atomic.Pointer[string]
}

// syncWarnAfter is how long Run waits for a watch to sync before it says so.
const syncWarnAfter = 10 * time.Second

// creatorRecheck is how often Run looks again for the admission policy that
// makes spec.requestedBy true.
const creatorRecheck = 5 * time.Minute

type seenOverride struct {
	phase string
	ref   *Override
	// resetPending is set when the override became Active with resetBreaker
	// and its reset has not succeeded yet (retried every Sync).
	resetPending bool
}

type change struct {
	o             *Override
	from, to, why string
}

// NewController builds a controller; Run starts it.
func NewController(cfg ControllerConfig) (*Controller, error) {
	if cfg.Client == nil || cfg.Engine == nil {
		return nil, errors.New("failed to build override controller: Client and Engine are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	c := &Controller{
		cfg:  cfg,
		log:  cfg.Logger,
		kick: make(chan struct{}, 1),
		seen: map[types.UID]seenOverride{},
		active: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kubedefender", Subsystem: "overrides", Name: "active",
			Help: "Break-glass overrides in force on this replica."}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kubedefender", Subsystem: "overrides", Name: "transitions_total",
			Help: "Overrides seen entering a phase: Active, Expired, Rejected, Revoked."}, []string{"phase"}),
	}
	if cfg.Registerer != nil {
		for _, col := range []prometheus.Collector{c.active, c.transitions} {
			if err := cfg.Registerer.Register(col); err != nil {
				return nil, fmt.Errorf("failed to register override metrics: %w", err)
			}
		}
	}
	return c, nil
}

// namespace is where Overrides count now.
func (c *Controller) namespace() string {
	if c.cfg.Namespace != "" {
		return c.cfg.Namespace
	}
	return c.cfg.Engine.Policy().Policy.Spec.BreakGlass.Namespace
}

// nsWatch is an informer on the Overrides of one namespace.
type nsWatch struct {
	ns     string
	inf    cache.SharedIndexInformer
	stop   context.CancelFunc
	done   chan struct{}
	synced bool
	// since is when the watch started; warned is set once Run has said
	// that it does not sync (no RBAC in a new breakGlass.namespace?).
	since  time.Time
	warned bool
}

func (c *Controller) watch(ctx context.Context, ns string) (*nsWatch, error) {
	wctx, cancel := context.WithCancel(ctx)
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(c.cfg.Client, 10*time.Minute, ns, nil)
	inf := factory.ForResource(GVR).Informer()
	kick := func(any) { c.poke() }
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: kick, UpdateFunc: func(any, any) { c.poke() }, DeleteFunc: kick,
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("failed to watch overrides in %s: %w", ns, err)
	}
	w := &nsWatch{ns: ns, inf: inf, stop: cancel, done: make(chan struct{}), since: c.cfg.Clock.Now()}
	factory.Start(wctx.Done())
	go func() {
		defer close(w.done)
		if cache.WaitForCacheSync(wctx.Done(), inf.HasSynced) {
			c.poke()
		}
		<-wctx.Done()
		factory.Shutdown()
	}()
	return w, nil
}

// Run watches Overrides until ctx is done. Every Tick (and on each event) it
// checks that it watches the policy's breakGlass.namespace, moving the watch
// when a reload changed it, and applies the overrides.
func (c *Controller) Run(ctx context.Context) error {
	tick := c.cfg.Clock.NewTicker(c.cfg.Tick)
	defer tick.Stop()
	var lastCreatorCheck time.Time
	var w *nsWatch
	defer func() {
		if w != nil {
			w.stop()
			<-w.done
		}
	}()
	for {
		if ns := c.namespace(); w == nil || w.ns != ns {
			if w != nil {
				w.stop()
				<-w.done
				c.log.Warn("breakGlass.namespace changed: watching overrides in the new namespace; those in the old one no longer apply",
					"from", w.ns, "to", ns)
			}
			nw, err := c.watch(ctx, ns)
			if err != nil {
				return err
			}
			c.mu.Lock()
			c.store, c.watching, c.moving = nil, ns, w != nil
			c.mu.Unlock()
			w = nw
		}
		if now := c.cfg.Clock.Now(); lastCreatorCheck.IsZero() || now.Sub(lastCreatorCheck) >= creatorRecheck {
			c.checkCreator(ctx)
			lastCreatorCheck = now
		}
		if !w.synced && w.inf.HasSynced() {
			w.synced = true
			c.mu.Lock()
			c.store, c.moving = w.inf.GetStore(), false
			c.mu.Unlock()
			c.log.Info("watching break-glass overrides", "namespace", w.ns)
		}
		if !w.synced && !w.warned && c.cfg.Clock.Since(w.since) > syncWarnAfter {
			w.warned = true
			c.log.Error("cannot list break-glass overrides yet; no override applies until it can (may KubeDefender's ServiceAccount list and watch overrides there?)",
				"namespace", w.ns, "waited", syncWarnAfter)
		}
		c.Sync(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
		case <-tick.C():
		}
	}
}

// checkCreator looks for the admission policy behind spec.requestedBy and
// logs when what it finds changes.
func (c *Controller) checkCreator(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := CreatorCheck(cctx, c.cfg.Client)
	if prev := c.creator.Swap(&res); prev != nil && *prev == res {
		return
	}
	if res == CreatorVerified {
		c.log.Info("Override spec.requestedBy is checked at admission against the authenticated creator", "policy", CreatorPolicy)
		return
	}
	attrs := []any{"policy", CreatorPolicy, "requestedBy", creatorNote(res)}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	c.log.Warn("Override spec.requestedBy is not known to be checked at admission: apply deploy/base/crd-override.yaml", attrs...)
}

// creatorCheck is the last CreatorCheck result.
func (c *Controller) creatorCheck() string {
	if p := c.creator.Load(); p != nil {
		return *p
	}
	return CreatorUnknown
}

func (c *Controller) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Sync recomputes the active overrides from the informer's store and hands
// them to the engine, reporting every change of phase.
func (c *Controller) Sync(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.store == nil && !c.moving {
		return // not synced yet: keep what applies (nothing, at startup)
	}
	now := c.cfg.Clock.Now()
	pol := c.cfg.Engine.Policy()
	current := map[types.UID]bool{}
	var active []limiter.Override
	var objs []*Override
	var items []any
	if c.store != nil {
		items = c.store.List()
	}
	for _, item := range items {
		u, ok := item.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		o, err := FromUnstructured(u)
		if err != nil {
			c.log.Error("unreadable override ignored", "override", u.GetNamespace()+"/"+u.GetName(), "err", err)
			continue
		}
		objs = append(objs, o)
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].Name < objs[j].Name })
	var changes []change
	for _, o := range objs {
		current[o.UID] = true
		phase, why := PhaseActive, ""
		if err := Check(o, pol); err != nil {
			phase, why = PhaseRejected, err.Error()
		} else if !now.Before(o.Spec.ExpiresAt.Time) {
			phase = PhaseExpired
		}
		if phase == PhaseActive {
			active = append(active, o.Limiter())
		}
		prev := c.seen[o.UID]
		next := seenOverride{phase: phase, ref: o, resetPending: prev.resetPending && phase == PhaseActive}
		if prev.phase != phase {
			changes = append(changes, change{o: o, from: prev.phase, to: phase, why: why})
			// Entering Active, from anything (first seen, or fixed after a
			// rejection), resets once; a failed reset is retried.
			next.resetPending = phase == PhaseActive && o.Spec.ResetBreaker
		}
		c.seen[o.UID] = next
	}
	for uid, s := range c.seen {
		if current[uid] {
			continue
		}
		delete(c.seen, uid)
		if s.phase == PhaseActive {
			why := "deleted"
			if s.ref.Namespace != c.watching {
				why = "breakGlass.namespace is now " + c.watching
			}
			changes = append(changes, change{o: s.ref, from: s.phase, to: PhaseRevoked, why: why})
		}
	}
	// Apply first: logging, Events and resets talk to the network, and an
	// incident (a slow API server) is exactly when an override must not wait.
	c.cfg.Engine.SetOverrides(active)
	c.active.Set(float64(len(active)))
	for _, ch := range changes {
		c.transition(ctx, ch.o, ch.from, ch.to, ch.why, now)
	}
	for uid, s := range c.seen {
		if !s.resetPending {
			continue
		}
		lo := s.ref.Limiter()
		attrs := []any{"override", s.ref.Namespace + "/" + s.ref.Name, "targets", s.ref.Targets(), "scope", s.ref.Scope()}
		if done := s.ref.Annotations[ResetAnnotation]; c.cfg.SharedStore && done != "" {
			s.resetPending = false
			c.seen[uid] = s
			c.log.Info("breakers of override already reset in the shared store", append(attrs, "reset", done)...)
			continue
		}
		if err := c.cfg.Engine.ResetBreakers(ctx, &lo); err != nil {
			c.log.Error("failed to reset breakers for override; retrying", append(attrs, "err", err)...)
			continue
		}
		s.resetPending = false
		c.seen[uid] = s
		c.log.Warn("breakers reset by override", attrs...)
		if c.cfg.SharedStore {
			c.recordReset(ctx, s.ref, now)
		}
		c.event(ctx, s.ref, corev1.EventTypeNormal, "BreakerReset", "breakers of "+s.ref.Targets()+" reset on "+c.cfg.Replica, now)
	}
}

func (c *Controller) transition(ctx context.Context, o *Override, from, to, why string, now time.Time) {
	c.transitions.WithLabelValues(to).Inc()
	name := o.Namespace + "/" + o.Name
	check := c.creatorCheck()
	attrs := []any{"override", name, "targets", o.Targets(), "scope", o.Scope(), "requestedBy", o.Spec.RequestedBy,
		"requestedByCheck", check, "reason", o.Spec.Reason, "expiresAt", o.Spec.ExpiresAt.UTC().Format(time.RFC3339)}
	var msg, evReason, evType string
	switch to {
	case PhaseActive:
		c.log.Warn("break-glass override active", attrs...)
		evReason, evType = "Activated", corev1.EventTypeWarning
		msg = fmt.Sprintf("override active on %s until %s (%s left): %s bypassed for %s; requested by %s (%s): %s",
			c.cfg.Replica, o.Spec.ExpiresAt.UTC().Format(time.RFC3339), o.Spec.ExpiresAt.Sub(now).Round(time.Second), o.Targets(), o.Scope(),
			o.Spec.RequestedBy, creatorNote(check), o.Spec.Reason)
	case PhaseExpired:
		if from == "" {
			// Already expired when this replica started: nothing changed here.
			c.log.Debug("break-glass override seen already expired", attrs...)
			return
		}
		c.log.Info("break-glass override expired", attrs...)
		evReason, evType = "Expired", corev1.EventTypeNormal
		msg = fmt.Sprintf("override expired on %s at %s; the rules apply again", c.cfg.Replica, o.Spec.ExpiresAt.UTC().Format(time.RFC3339))
	case PhaseRejected:
		c.log.Error("break-glass override rejected", append(attrs, "why", why)...)
		evReason, evType = "Rejected", corev1.EventTypeWarning
		msg = "override not applied on " + c.cfg.Replica + ": " + why
	case PhaseRevoked:
		c.log.Warn("break-glass override revoked", append(attrs, "why", why)...)
		if why == "deleted" {
			return // the object is gone: an Event on it would dangle
		}
		evReason, evType = "Revoked", corev1.EventTypeWarning
		msg = "override no longer applied on " + c.cfg.Replica + ": " + why

	}
	c.event(ctx, o, evType, evReason, msg, now)
}

func (c *Controller) event(ctx context.Context, o *Override, typ, reason, msg string, now time.Time) {
	if c.cfg.Events == nil {
		return
	}
	ts := metav1.NewTime(now)
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: o.Name + "-", Namespace: o.Namespace},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: APIVersion, Kind: Kind, Namespace: o.Namespace, Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion,
		},
		Reason: reason, Message: truncate(msg, 1024), Type: typ,
		Source:         corev1.EventSource{Component: "kubedefender", Host: c.cfg.Replica},
		FirstTimestamp: ts, LastTimestamp: ts, Count: 1,
		ReportingController: "kubedefender.io/breakglass", ReportingInstance: c.cfg.Replica,
	}
	ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.cfg.Events.Events(o.Namespace).Create(ectx, ev, metav1.CreateOptions{}); err != nil {
		c.log.Error("failed to record override event", "override", o.Namespace+"/"+o.Name, "reason", reason, "err", err)
	}
}

// recordReset marks the override as reset in the shared store (a merge patch,
// so it never conflicts); a replica that misses it resets once more, which
// is harmless at activation.
func (c *Controller) recordReset(ctx context.Context, o *Override, now time.Time) {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		ResetAnnotation: now.UTC().Format(time.RFC3339) + " by " + c.cfg.Replica,
	}}})
	if err != nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.cfg.Client.Resource(GVR).Namespace(o.Namespace).Patch(pctx, o.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		c.log.Error("failed to record the breaker reset on the override", "override", o.Namespace+"/"+o.Name, "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
