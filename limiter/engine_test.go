package limiter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/policy"
)

func newTestEngine(t testing.TB, cfg EngineConfig) (*Engine, *clocktesting.FakeClock) {
	t.Helper()
	clk := clocktesting.NewFakeClock(testEpoch)
	if cfg.Policy == nil {
		cfg.Policy = parse(t, enginePolicy)
	}
	cfg.Clock = clk
	if cfg.Store == nil {
		cfg.Store = NewMemoryStore(MemoryConfig{Clock: clk})
	}
	if cfg.Fallback == nil {
		cfg.Fallback = NewMemoryStore(MemoryConfig{Clock: clk})
	}
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e, clk
}

func podDelete(ns, name string) *Attributes {
	return &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "pods", Namespace: ns, Name: name, User: "alice"}, Checks: CheckBudgets}
}

func TestEngineDeniesWithAnActionableMessage(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{})
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if d := e.Decide(ctx, podDelete("prod", fmt.Sprint("web-", i))); !d.Allowed {
			t.Fatalf("delete %d denied: %s", i, d.Message)
		}
	}
	d := e.Decide(ctx, podDelete("prod", "web-3"))
	if d.Allowed || d.Code != http.StatusForbidden || !errors.Is(d.Err, ErrBreakerOpen) || d.Rule != "pod-deletes" || d.Key != "namespace=prod" {
		t.Fatalf("4th delete: %+v, want 403 from the Manual breaker of pod-deletes/namespace=prod", d)
	}
	if d.Window != time.Minute || d.Used != 3 || d.Limit != 3 {
		t.Fatalf("denial names window %s %d/%d, want 1m 3/3", d.Window, d.Used, d.Limit)
	}
	for _, want := range []string{`budget "pod-deletes"`, "key namespace=prod", `pods "web-3" in namespace "prod"`,
		"window 1m is exhausted (3/3 used)", "recovery is Manual",
		`kubedefender breakglass grant --budget pod-deletes --namespace prod --for 30m --reason`} {
		if !strings.Contains(d.Message, want) {
			t.Errorf("message lacks %q:\n%s", want, d.Message)
		}
	}
	// Another namespace has its own key.
	if d := e.Decide(ctx, podDelete("dev", "x")); !d.Allowed {
		t.Fatalf("namespace dev denied by prod's breaker: %s", d.Message)
	}
}

func TestEngineAutoBreakerAnswers429WithRetryAfter(t *testing.T) {
	e, clk := newTestEngine(t, EngineConfig{})
	ctx := context.Background()
	node := &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "nodes", Name: "n1", User: "ops"}, Checks: CheckBudgets}
	e.Decide(ctx, node)
	e.Decide(ctx, node)
	d := e.Decide(ctx, node)
	if d.Allowed || d.Code != http.StatusTooManyRequests || d.RetryAfter != 5*time.Minute || d.State != Open {
		t.Fatalf("trip: %+v, want 429 retry in the 5m cooldown", d)
	}
	if !strings.Contains(d.Message, "recovery is Auto: retry after 5m0s") {
		t.Fatalf("message: %s", d.Message)
	}
	clk.Step(5 * time.Minute)
	if d := e.Decide(ctx, node); !d.Allowed {
		t.Fatalf("half-open probe denied: %s", d.Message)
	}
	if d := e.Decide(ctx, node); d.Allowed || !errors.Is(d.Err, ErrBreakerOpen) {
		t.Fatalf("second probe: %+v, want the half-open quota to deny", d)
	}
}

func TestEngineExcludesAndDryRun(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{})
	ctx := context.Background()
	gc := podDelete("prod", "x")
	gc.User = "system:serviceaccount:kube-system:generic-garbage-collector"
	for i := 0; i < 10; i++ {
		if d := e.Decide(ctx, gc); !d.Allowed {
			t.Fatalf("the excluded garbage collector was charged: %s", d.Message)
		}
	}
	dry := podDelete("prod", "x")
	dry.DryRun = true
	for i := 0; i < 10; i++ {
		if d := e.Decide(ctx, dry); !d.Allowed {
			t.Fatalf("dry run %d denied: %s", i, d.Message)
		}
	}
	for i := 0; i < 3; i++ {
		if d := e.Decide(ctx, podDelete("prod", "x")); !d.Allowed {
			t.Fatalf("real delete %d denied after dry runs: %s", i, d.Message)
		}
	}
}

func TestEngineShadowWarnsAndNeverDenies(t *testing.T) {
	reg := prometheus.NewRegistry()
	e, _ := newTestEngine(t, EngineConfig{Registerer: reg})
	ctx := context.Background()
	svc := &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "services", Namespace: "prod", Name: "api"}, Checks: CheckBudgets}
	if d := e.Decide(ctx, svc); !d.Allowed || len(d.Warnings) != 0 {
		t.Fatalf("first: %+v", d)
	}
	d := e.Decide(ctx, svc)
	if !d.Allowed || len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], `shadow budget "svc-deletes" (key namespace=prod) would have denied`) {
		t.Fatalf("second: %+v, want allowed with a shadow warning", d)
	}
	got := testutil.ToFloat64(e.metrics.decisions.WithLabelValues("webhook", "budget", "svc-deletes", "shadow-denied"))
	if got != 1 {
		t.Fatalf("shadow-denied counter = %v, want 1", got)
	}
}

func TestEngineRateLimits(t *testing.T) {
	e, clk := newTestEngine(t, EngineConfig{})
	ctx := context.Background()
	list := &Attributes{Attributes: policy.Attributes{Verb: "list", Resource: "pods", User: "system:node:n1", UserAgent: "node-agent/1.0"}, Front: FrontProxy, Checks: CheckRateLimits}
	e.Decide(ctx, list)
	e.Decide(ctx, list)
	d := e.Decide(ctx, list)
	if d.Allowed || d.Code != http.StatusTooManyRequests || d.Reason != "TooManyRequests" || d.RetryAfter != time.Second || !errors.Is(d.Err, ErrRateLimited) {
		t.Fatalf("third list: %+v, want 429 retry after 1s", d)
	}
	if d.Key != "user=system:node:n1,userAgent=node-agent/1.0" {
		t.Fatalf("key %q", d.Key)
	}
	kubectl := *list
	kubectl.UserAgent = "kubectl/v1.32"
	if d := e.Decide(ctx, &kubectl); !d.Allowed {
		t.Fatal("a user agent the rule does not match was limited")
	}
	clk.Step(time.Second)
	if d := e.Decide(ctx, list); !d.Allowed {
		t.Fatal("a token did not come back after 1/qps")
	}
}

func TestEngineOverridesBypassAndReset(t *testing.T) {
	e, clk := newTestEngine(t, EngineConfig{})
	ctx := context.Background()
	for i := 0; i < 4; i++ {
		e.Decide(ctx, podDelete("prod", "x"))
	}
	if d := e.Decide(ctx, podDelete("prod", "x")); d.Allowed {
		t.Fatal("breaker not open")
	}
	o := Override{Name: "inc-1", Budgets: []string{"pod-deletes"}, Namespaces: []string{"prod"}, ExpiresAt: testEpoch.Add(10 * time.Minute)}
	e.SetOverrides([]Override{o})
	for i := 0; i < 20; i++ {
		d := e.Decide(ctx, podDelete("prod", "x"))
		if !d.Allowed || d.Override != "inc-1" {
			t.Fatalf("override did not bypass: %+v", d)
		}
	}
	if d := e.Decide(ctx, podDelete("dev", "x")); d.Override != "" {
		t.Fatal("an override scoped to prod covered dev")
	}
	clk.Step(10 * time.Minute)
	if d := e.Decide(ctx, podDelete("prod", "x")); d.Allowed {
		t.Fatal("an expired override still bypassed the open breaker")
	}
	if err := e.ResetBreakers(ctx, &o); err != nil {
		t.Fatal(err)
	}
	if d := e.Decide(ctx, podDelete("prod", "x")); !d.Allowed {
		t.Fatalf("after resetBreaker: %s", d.Message)
	}
}

// failingStore is a store that cannot be reached: a fault injector.
type failingStore struct{}

func (failingStore) Budgets(context.Context, *BudgetBatch) error {
	return fmt.Errorf("failed to reach redis: %w", ErrStoreUnavailable)
}
func (failingStore) Rates(context.Context, *RateBatch) error {
	return fmt.Errorf("failed to reach redis: %w", ErrStoreUnavailable)
}
func (failingStore) ResetBudget(context.Context, *BudgetSpec, string) error {
	return ErrStoreUnavailable
}
func (failingStore) ResetBudgetKeys(context.Context, *BudgetSpec, func(string) bool) ([]string, error) {
	return nil, ErrStoreUnavailable
}
func (failingStore) CarryBreakers(context.Context, *BudgetSpec, *BudgetSpec) ([]string, error) {
	return nil, ErrStoreUnavailable
}
func (failingStore) Retain(map[string]bool, map[string]*BudgetSpec) {}
func (failingStore) InspectBudget(context.Context, *BudgetSpec, int) ([]BudgetKeyStatus, error) {
	return nil, ErrStoreUnavailable
}
func (failingStore) HottestRates(context.Context, *RateSpec, int) ([]RateKeyStatus, error) {
	return nil, ErrStoreUnavailable
}

func TestEngineFollowsOnStoreFailure(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{Store: failingStore{}, Replicas: func() int { return 3 }})
	ctx := context.Background()
	// Local: pod-deletes allows 3/min shared by 3 replicas → 1 for this one.
	if d := e.Decide(ctx, podDelete("prod", "a")); !d.Allowed || !d.Fallback {
		t.Fatalf("first local delete: %+v", d)
	}
	if d := e.Decide(ctx, podDelete("prod", "b")); d.Allowed {
		t.Fatal("Local fallback admitted more than this replica's share (1 of 3)")
	}
	// Deny: node-deletes answers 503.
	node := &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "nodes", Name: "n1"}, Checks: CheckBudgets}
	if d := e.Decide(ctx, node); d.Allowed || d.Code != http.StatusServiceUnavailable || !errors.Is(d.Err, ErrStoreUnavailable) {
		t.Fatalf("Deny rule: %+v", d)
	}
	// Allow: rate limits default to Allow.
	list := &Attributes{Attributes: policy.Attributes{Verb: "list", Resource: "pods", UserAgent: "node-agent/1"}, Checks: CheckRateLimits}
	for i := 0; i < 10; i++ {
		if d := e.Decide(ctx, list); !d.Allowed {
			t.Fatal("an Allow rule denied while the store was down")
		}
	}
}

func TestEngineReloadKeepsCountersOfUnchangedRules(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{})
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		e.Decide(ctx, podDelete("prod", "x"))
	}
	// Same windows, another rule added: pod-deletes keeps its count.
	setPolicy(t, e, parse(t, enginePolicy+`
  - name: extra
    match: {verbs: [get]}
    qps: 5
`))
	if d := e.Decide(ctx, podDelete("prod", "x")); d.Allowed {
		t.Fatal("an unrelated reload reset pod-deletes")
	}
	// Changed windows: the counts start afresh, but the Manual breaker that
	// the 4th delete opened stays Open: only an override closes it.
	setPolicy(t, e, parse(t, strings.Replace(enginePolicy, "{window: 1m, limit: 3}", "{window: 1m, limit: 4}", 1)))
	d := e.Decide(ctx, podDelete("prod", "x"))
	if d.Allowed || d.Code != http.StatusForbidden || !strings.Contains(d.Message, "1m: 0/4") {
		t.Fatalf("after a windows edit: %+v, want the Open Manual breaker carried over (403) with fresh counts (1m: 0/4)", d)
	}
	if err := e.ResetBreakers(ctx, &Override{Name: "o", Budgets: []string{"pod-deletes"}, Namespaces: []string{"prod"}, ResetBreaker: true}); err != nil {
		t.Fatal(err)
	}
	if d := e.Decide(ctx, podDelete("prod", "x")); !d.Allowed {
		t.Fatalf("after the override reset: %s", d.Message)
	}
}

func TestEngineBreakerCheckRejectsEarlyWithoutCharging(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{})
	ctx := context.Background()
	early := podDelete("prod", "x")
	early.Checks = CheckBreakers
	early.Front = FrontProxy
	for i := 0; i < 10; i++ {
		if d := e.Decide(ctx, early); !d.Allowed {
			t.Fatal("a closed breaker rejected early")
		}
	}
	for i := 0; i < 4; i++ {
		e.Decide(ctx, podDelete("prod", "x"))
	}
	if d := e.Decide(ctx, early); d.Allowed || d.Code != http.StatusForbidden {
		t.Fatalf("open breaker: %+v, want an early 403", d)
	}
}

// TestEngineNearLimitHoldsForHugeLimits: limit×4 overflowed for limits above
// 2^61, so every admission counted as near the limit.
func TestEngineNearLimitHoldsForHugeLimits(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{Registerer: prometheus.NewRegistry(), Policy: parse(t, `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: huge}
spec:
  budgets:
  - name: huge
    match: {verbs: [delete]}
    windows: [{window: 1m, limit: 9223372036854775807}]
`)})
	if d := e.Decide(context.Background(), podDelete("prod", "x")); !d.Allowed {
		t.Fatal(d.Message)
	}
	if n := testutil.ToFloat64(e.metrics.nearLimit.WithLabelValues("huge", "1m")); n != 0 {
		t.Fatalf("near_limit_total = %v after 1 of 2^63-1, want 0", n)
	}
}
