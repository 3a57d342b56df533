package override

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/internal/logtest"
	"github.com/kubedefender/kubedefender/internal/testwait"
	"github.com/kubedefender/kubedefender/limiter"
)

// t0 is when every test on the fake clock starts; overrides are created then.
var t0 = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)

// harness runs a Controller on fake clients and a fake clock.
type harness struct {
	c      *Controller
	dyn    *dynamicfake.FakeDynamicClient
	events *kubefake.Clientset
	eng    *fakeEngine
	clk    *clocktesting.FakeClock
	logs   *logtest.Buffer
	ctx    context.Context
}

// start runs a controller for the Overrides objs in bg-a (the policy's
// breakGlass.namespace) until the test ends; configure adjusts its config.
func start(t *testing.T, configure func(*ControllerConfig), objs ...runtime.Object) *harness {
	t.Helper()
	h := &harness{
		dyn: dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
			GVR: "OverrideList", vapGVR: "ValidatingAdmissionPolicyList", vapBindingGVR: "ValidatingAdmissionPolicyBindingList",
		}, objs...),
		events: kubefake.NewClientset(),
		eng:    &fakeEngine{},
		clk:    clocktesting.NewFakeClock(t0),
		logs:   &logtest.Buffer{},
	}
	var evSeq atomic.Int64
	h.events.PrependReactor("create", "events", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ev := a.(k8stesting.CreateAction).GetObject().(*corev1.Event)
		if ev.Name == "" { // the fake tracker does not generate names
			ev.Name = fmt.Sprintf("%s%d", ev.GenerateName, evSeq.Add(1))
		}
		return false, nil, nil
	})
	h.eng.pol.Store(policyIn(t, "bg-a"))
	cfg := ControllerConfig{Client: h.dyn, Events: h.events.CoreV1(), Engine: h.eng, Replica: "r1", Clock: h.clk,
		Logger: slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Registerer: prometheus.NewRegistry()}
	if configure != nil {
		configure(&cfg)
	}
	c, err := NewController(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	ctx, cancel := context.WithCancel(context.Background())
	h.ctx = ctx
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

// eventsIn lists the Events recorded in ns as "reason name: message", in
// creation order.
func (h *harness) eventsIn(t *testing.T, ns string) []corev1.Event {
	t.Helper()
	l, err := h.events.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(l.Items, func(a, b corev1.Event) int { return strings.Compare(a.Name, b.Name) })
	return l.Items
}

// eventFor returns the Event with reason on the override name, waiting for it.
func (h *harness) eventFor(t *testing.T, name, reason string) corev1.Event {
	t.Helper()
	var found corev1.Event
	testwait.Until(t, "an Event "+reason+" on "+name, func() bool {
		for _, ev := range h.eventsIn(t, "bg-a") {
			if ev.InvolvedObject.Name == name && ev.Reason == reason {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// reasons lists the Events on the override name by reason, in order.
func (h *harness) reasons(t *testing.T, name string) []string {
	t.Helper()
	var out []string
	for _, ev := range h.eventsIn(t, "bg-a") {
		if ev.InvolvedObject.Name == name {
			out = append(out, ev.Reason)
		}
	}
	return out
}

// newOverride is an Override in ns created at t0 for 30 minutes on
// pod-deletes, changed by mut.
func newOverride(t *testing.T, ns, name string, mut func(*Override)) *unstructured.Unstructured {
	t.Helper()
	o := &Override{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID(ns + "-" + name), CreationTimestamp: metav1.NewTime(t0)},
		Spec: Spec{Budgets: []string{"pod-deletes"}, ExpiresAt: metav1.NewTime(t0.Add(30 * time.Minute)), Reason: "INC-1: drain", RequestedBy: "alice"}}
	if mut != nil {
		mut(o)
	}
	u, err := o.ToUnstructured()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestControllerAppliesAnOverrideUntilItExpires(t *testing.T) {
	// Given an override of pod-deletes in prod, valid for 30 minutes from t0
	h := start(t, nil, newOverride(t, "bg-a", "drain", func(o *Override) { o.Spec.Namespaces = []string{"prod"} }))

	// When the controller has listed it, then the engine applies it as written
	testwait.Until(t, "the override applies", func() bool { return h.eng.applied() == "bg-a/drain" })
	h.eng.mu.Lock()
	got := h.eng.overrides[0]
	h.eng.mu.Unlock()
	want := limiter.Override{Name: "drain", Namespace: "bg-a", Budgets: []string{"pod-deletes"}, Namespaces: []string{"prod"},
		ExpiresAt: t0.Add(30 * time.Minute), Reason: "INC-1: drain", RequestedBy: "alice"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("engine override = %+v, want %+v", got, want)
	}
	// and an Activated Event says until when, what and for whom, stamped on the clock
	ev := h.eventFor(t, "drain", "Activated")
	for _, part := range []string{"override active on r1 until 2026-11-30T06:30:00Z (30m0s left)", "budgets pod-deletes bypassed for namespaces prod", "requested by alice", "INC-1: drain"} {
		if !strings.Contains(ev.Message, part) {
			t.Errorf("Activated message %q lacks %q", ev.Message, part)
		}
	}
	if ev.Type != corev1.EventTypeWarning || !ev.FirstTimestamp.Time.Equal(t0) || ev.Source.Host != "r1" || ev.InvolvedObject.UID != "bg-a-drain" {
		t.Errorf("Activated Event = %+v, want a Warning on bg-a-drain from r1 at %s", ev, t0)
	}
	if v := testutil.ToFloat64(h.c.active); v != 1 {
		t.Errorf("overrides_active = %v, want 1", v)
	}

	// When the clock reaches one second before expiry, then it still applies
	h.clk.SetTime(t0.Add(30*time.Minute - time.Second))
	h.c.Sync(h.ctx)
	if got := h.eng.applied(); got != "bg-a/drain" {
		t.Fatalf("one second before expiry the engine applies %q, want bg-a/drain", got)
	}

	// When the clock steps to expiresAt, then the tick removes it from the engine
	h.clk.Step(time.Second)
	testwait.Until(t, "the expired override no longer applies", func() bool { return h.eng.applied() == "" })
	ev = h.eventFor(t, "drain", "Expired")
	if want := "override expired on r1 at 2026-11-30T06:30:00Z; the rules apply again"; ev.Message != want || !ev.FirstTimestamp.Time.Equal(t0.Add(30*time.Minute)) {
		t.Errorf("Expired Event = %q at %s, want %q at expiry", ev.Message, ev.FirstTimestamp, want)
	}
	if v := testutil.ToFloat64(h.c.active); v != 0 {
		t.Errorf("overrides_active = %v after expiry, want 0", v)
	}
	for phase, want := range map[string]float64{PhaseActive: 1, PhaseExpired: 1, PhaseRevoked: 0, PhaseRejected: 0} {
		if v := testutil.ToFloat64(h.c.transitions.WithLabelValues(phase)); v != want {
			t.Errorf("transitions_total{phase=%s} = %v, want %v", phase, v, want)
		}
	}
}

func TestControllerIgnoresAnOverrideExpiredBeforeItStarted(t *testing.T) {
	// Given an override that expired before the replica started
	h := start(t, nil, newOverride(t, "bg-a", "old", func(o *Override) {
		o.CreationTimestamp = metav1.NewTime(t0.Add(-2 * time.Hour))
		o.Spec.ExpiresAt = metav1.NewTime(t0.Add(-time.Hour))
	}), newOverride(t, "bg-a", "current", nil))

	// When the controller has listed both, then only the current one applies
	testwait.Until(t, "the current override applies", func() bool { return h.eng.applied() == "bg-a/current" })
	// and the old one is only noted at debug level, with no Event: nothing changed on this replica
	testwait.Until(t, "a debug line notes the already expired override", func() bool {
		return strings.Contains(h.logs.String(), `msg="break-glass override seen already expired" override=bg-a/old`)
	})
	h.eventFor(t, "current", "Activated")
	if got := h.reasons(t, "old"); len(got) != 0 {
		t.Errorf("Events on the already expired override: %v, want none", got)
	}
}

func TestControllerRevokesADeletedOverride(t *testing.T) {
	// Given an override in force
	h := start(t, nil, newOverride(t, "bg-a", "drain", nil))
	testwait.Until(t, "the override applies", func() bool { return h.eng.applied() == "bg-a/drain" })

	// When it is deleted (breakglass revoke)
	if err := h.dyn.Resource(GVR).Namespace("bg-a").Delete(context.Background(), "drain", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// Then it stops applying at once, without waiting for a tick
	testwait.Until(t, "the deleted override no longer applies", func() bool { return h.eng.applied() == "" })
	// and the revocation is logged and counted, with no Event on the gone object
	testwait.Until(t, "the revocation is logged", func() bool {
		return strings.Contains(h.logs.String(), `msg="break-glass override revoked"`) && strings.Contains(h.logs.String(), "why=deleted")
	})
	if v := testutil.ToFloat64(h.c.transitions.WithLabelValues(PhaseRevoked)); v != 1 {
		t.Errorf("transitions_total{phase=Revoked} = %v, want 1", v)
	}
	if got := h.reasons(t, "drain"); !slices.Equal(got, []string{"Activated"}) {
		t.Errorf("Events on the deleted override: %v, want only Activated", got)
	}
}

func TestControllerRejectsBadOverridesAndAppliesTheRest(t *testing.T) {
	unreadable := newOverride(t, "bg-a", "unreadable", nil)
	if err := unstructured.SetNestedField(unreadable.Object, "not a list", "spec", "budgets"); err != nil {
		t.Fatal(err)
	}
	rejected := []struct {
		name string
		mut  func(*Override)
		why  string
	}{
		{name: "no-reason", mut: func(o *Override) { o.Spec.Reason = " " }, why: "spec.reason is required"},
		{name: "too-long", mut: func(o *Override) { o.Spec.ExpiresAt = metav1.NewTime(t0.Add(3 * time.Hour)) },
			why: "spec.expiresAt is 3h0m0s after creation, longer than breakGlass.maxDuration (1h)"},
		{name: "unknown-rule", mut: func(o *Override) { o.Spec.Budgets = []string{"node-deletes"} }, why: `the policy has no budget "node-deletes"`},
		{name: "nothing-named", mut: func(o *Override) { o.Spec.Budgets = nil }, why: "name at least one budget or rate limit"},
	}
	// Given a good override beside bad ones and one that does not decode
	objs := []runtime.Object{newOverride(t, "bg-a", "good", nil), unreadable}
	for _, r := range rejected {
		objs = append(objs, newOverride(t, "bg-a", r.name, r.mut))
	}
	h := start(t, nil, objs...)

	// Then the good one applies and only it
	testwait.Until(t, "the good override applies", func() bool { return h.eng.applied() == "bg-a/good" })
	// and each bad one gets a Rejected Event saying why
	for _, r := range rejected {
		t.Run("an override with "+strings.ReplaceAll(r.name, "-", " ")+" is rejected with the reason", func(t *testing.T) {
			ev := h.eventFor(t, r.name, "Rejected")
			if !strings.Contains(ev.Message, "override not applied on r1: ") || !strings.Contains(ev.Message, r.why) || ev.Type != corev1.EventTypeWarning {
				t.Errorf("Rejected Event = %s %q, want a Warning saying %q", ev.Type, ev.Message, r.why)
			}
		})
	}
	if v := testutil.ToFloat64(h.c.transitions.WithLabelValues(PhaseRejected)); v != float64(len(rejected)) {
		t.Errorf("transitions_total{phase=Rejected} = %v, want %d", v, len(rejected))
	}
	// and the one that does not decode is logged and otherwise ignored
	if !strings.Contains(h.logs.String(), `msg="unreadable override ignored" override=bg-a/unreadable`) {
		t.Errorf("the unreadable override is not reported in:\n%s", h.logs)
	}
	if got := h.reasons(t, "unreadable"); len(got) != 0 {
		t.Errorf("Events on the unreadable override: %v, want none", got)
	}

	// When a rejected override is fixed, then it applies
	fixed := newOverride(t, "bg-a", "no-reason", nil)
	fixed.SetResourceVersion("")
	if _, err := h.dyn.Resource(GVR).Namespace("bg-a").Update(context.Background(), fixed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the fixed override applies", func() bool { return h.eng.applied() == "bg-a/good,bg-a/no-reason" })
	h.eventFor(t, "no-reason", "Activated")
}

// resettingEngine is a fakeEngine whose ResetBreakers fails while failing is
// set and records the overrides it reset.
type resettingEngine struct {
	*fakeEngine
	failing atomic.Bool
	mu      sync.Mutex
	calls   int
	reset   []string
}

func newResettingEngine(t *testing.T) *resettingEngine {
	e := &resettingEngine{fakeEngine: &fakeEngine{}}
	e.pol.Store(policyIn(t, "bg-a"))
	return e
}

func (e *resettingEngine) ResetBreakers(_ context.Context, o *limiter.Override) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls++
	if e.failing.Load() {
		return errors.New("store unreachable")
	}
	e.reset = append(e.reset, o.Namespace+"/"+o.Name)
	return nil
}

func (e *resettingEngine) resets() (calls int, reset []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls, slices.Clone(e.reset)
}

func TestControllerResetsBreakersOnceForTheSharedStore(t *testing.T) {
	// Given an override with resetBreaker, on a shared store that fails at first
	obj := newOverride(t, "bg-a", "drain", func(o *Override) { o.Spec.ResetBreaker = true })
	eng := newResettingEngine(t)
	eng.failing.Store(true)
	h := start(t, func(c *ControllerConfig) { c.Engine, c.SharedStore = eng, true }, obj)

	// When it activates, then the override applies while the failed reset is logged
	testwait.Until(t, "the override applies", func() bool { return eng.applied() == "bg-a/drain" })
	testwait.Until(t, "the failed reset is logged", func() bool {
		return strings.Contains(h.logs.String(), "failed to reset breakers for override; retrying")
	})
	if _, reset := eng.resets(); len(reset) != 0 {
		t.Fatalf("reset %v while the store fails", reset)
	}

	// When the store answers a second later, then the next sync resets the breakers
	h.clk.SetTime(t0.Add(time.Second))
	eng.failing.Store(false)
	h.c.Sync(h.ctx)
	if _, reset := eng.resets(); !slices.Equal(reset, []string{"bg-a/drain"}) {
		t.Fatalf("reset %v, want bg-a/drain once", reset)
	}
	// and the reset is recorded on the Override for replicas that start later, with an Event
	ev := h.eventFor(t, "drain", "BreakerReset")
	if want := "breakers of budgets pod-deletes reset on r1"; ev.Message != want {
		t.Errorf("BreakerReset message = %q, want %q", ev.Message, want)
	}
	recorded, err := h.dyn.Resource(GVR).Namespace("bg-a").Get(context.Background(), "drain", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := recorded.GetAnnotations()[ResetAnnotation], "2026-11-30T06:00:01Z by r1"; got != want {
		t.Errorf("%s = %q, want %q", ResetAnnotation, got, want)
	}

	// When later ticks pass, then it does not reset again
	calls, _ := eng.resets()
	h.clk.Step(time.Second)
	h.c.Sync(h.ctx)
	if after, reset := eng.resets(); after != calls || len(reset) != 1 {
		t.Errorf("after another tick ResetBreakers was called %d more times (reset %v), want none", after-calls, reset)
	}

	// When a second replica starts on the same store, then it sees the record and does not reset
	eng2 := newResettingEngine(t)
	h2 := start(t, func(c *ControllerConfig) { c.Engine, c.SharedStore, c.Replica = eng2, true, "r2" }, recorded)
	testwait.Until(t, "the second replica applies the override", func() bool { return eng2.applied() == "bg-a/drain" })
	testwait.Until(t, "the second replica says it was already reset", func() bool {
		return strings.Contains(h2.logs.String(), "breakers of override already reset in the shared store")
	})
	if calls, _ := eng2.resets(); calls != 0 {
		t.Errorf("the second replica called ResetBreakers %d times, want 0", calls)
	}
}

func TestControllerSaysWhenRequestedByCannotBeChecked(t *testing.T) {
	// Given an API server that forbids reading the admission policy
	h := start(t, func(c *ControllerConfig) {
		dyn := c.Client.(*dynamicfake.FakeDynamicClient)
		dyn.PrependReactor("get", "validatingadmissionpolicies", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(vapGVR.GroupResource(), CreatorPolicy, errors.New("no RBAC"))
		})
	}, newOverride(t, "bg-a", "drain", nil))

	// When the override activates, then its Event says requestedBy is not known to be verified
	ev := h.eventFor(t, "drain", "Activated")
	if want := "requested by alice (not known to be verified: ValidatingAdmissionPolicy " + CreatorPolicy + " could not be read)"; !strings.Contains(ev.Message, want) {
		t.Errorf("Activated message %q lacks %q", ev.Message, want)
	}
	// and the log says why
	if !strings.Contains(h.logs.String(), "Override spec.requestedBy is not known to be checked at admission") || !strings.Contains(h.logs.String(), "no RBAC") {
		t.Errorf("the log does not say requestedBy is unchecked and why:\n%s", h.logs)
	}
}

func TestControllerSaysWhenItCannotListOverrides(t *testing.T) {
	// Given an API server that forbids listing Overrides (no RBAC in breakGlass.namespace)
	h := start(t, func(c *ControllerConfig) {
		dyn := c.Client.(*dynamicfake.FakeDynamicClient)
		dyn.PrependReactor("list", "overrides", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(GVR.GroupResource(), "", errors.New("no RBAC"))
		})
	}, newOverride(t, "bg-a", "drain", nil))
	const said = "cannot list break-glass overrides yet"
	// (Run checks the admission policy right after it starts the watch.)
	testwait.Until(t, "the watch has started", func() bool { return strings.Contains(h.logs.String(), "Override spec.requestedBy") })

	// When 10s pass, then a round of Run says nothing yet
	// (a round starts by reading the policy: once the round after the tick's
	// has started, the tick's round is over)
	n := h.eng.policyReads.Load()
	h.clk.Step(syncWarnAfter)
	testwait.Until(t, "the tick starts a round", func() bool { return h.eng.policyReads.Load() > n })
	h.c.poke()
	testwait.Until(t, "the next round starts", func() bool { return h.eng.policyReads.Load() > n+1 })
	if strings.Contains(h.logs.String(), said) {
		t.Fatalf("warned after only %s:\n%s", syncWarnAfter, h.logs)
	}
	// When the watch has not synced for longer, then the next tick says so
	h.clk.Step(time.Second)
	testwait.Until(t, "the controller says it cannot list overrides", func() bool { return strings.Contains(h.logs.String(), said) })
	// and no override applies meanwhile
	if got := h.eng.applied(); got != "" {
		t.Errorf("the engine applies %q without a synced watch, want nothing", got)
	}
}
