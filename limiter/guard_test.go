package limiter

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kubedefender/kubedefender/internal/logtest"
	"github.com/kubedefender/kubedefender/policy"
)

// unvalidated returns a policy that passed validation, edited afterwards the
// way only a caller that skipped validation could: the engine must survive it.
func unvalidated(t *testing.T, onFail string, edit func(c *policy.Compiled)) *policy.Compiled {
	t.Helper()
	c := parse(t, `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: unvalidated}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods]}
    per: [namespace]
    windows:
    - {window: 1m, limit: 1}
    - {window: 2m, limit: 2}
    - {window: 3m, limit: 3}
    - {window: 4m, limit: 4}
    - {window: 5m, limit: 5}
    - {window: 6m, limit: 6}
    - {window: 7m, limit: 7}
    - {window: 8m, limit: 8}
    breaker: {recovery: Manual}
    onStoreFailure: `+onFail+`
  rateLimits:
  - name: lists
    match: {verbs: [list]}
    per: [userAgent]
    qps: 1
    burst: 1
    onStoreFailure: `+onFail+`
`)
	edit(c)
	return c
}

// TestEngineSurvivesPoliciesThatSkippedValidation: the three reproduced
// crashes (a 9th window indexed past the result arrays; qps 1e-11 overflowed
// the refill interval; burst 1e10 overflowed burst×interval) are refused by
// validation, and an engine handed them anyway never panics: each such rule
// follows its onStoreFailure, on both stores.
func TestEngineSurvivesPoliciesThatSkippedValidation(t *testing.T) {
	nineWindows := func(c *policy.Compiled) {
		b := c.Budgets[0].Budget
		b.Windows = append(b.Windows, policy.Window{Window: policy.Duration{Duration: 9 * time.Minute}, Limit: 9})
	}
	tinyQPS := func(c *policy.Compiled) { c.RateLimits[0].QPS = 1e-11 }
	hugeBurst := func(c *policy.Compiled) { c.RateLimits[0].Burst = 1e10 }
	del := func() *Attributes { return podDelete("prod", "p") }
	list := func() *Attributes {
		return &Attributes{Attributes: policy.Attributes{Verb: "list", Resource: "pods", User: "u", UserAgent: "flood"}, Front: FrontProxy}
	}
	cases := []struct {
		name    string
		edit    func(*policy.Compiled)
		onFail  string
		request func() *Attributes
		rule    string
		allowed bool
	}{
		{"nine windows with onStoreFailure Deny deny with 503", nineWindows, "Deny", del, "pod-deletes", false},
		{"nine windows with onStoreFailure Allow admit", nineWindows, "Allow", del, "pod-deletes", true},
		{"nine windows with onStoreFailure Local admit (the local store cannot run them either)", nineWindows, "Local", del, "pod-deletes", true},
		{"qps 1e-11 with onStoreFailure Deny denies with 503", tinyQPS, "Deny", list, "lists", false},
		{"qps 1e-11 with onStoreFailure Allow admits", tinyQPS, "Allow", list, "lists", true},
		{"burst 1e10 with onStoreFailure Deny denies with 503", hugeBurst, "Deny", list, "lists", false},
		{"burst 1e10 with onStoreFailure Allow admits", hugeBurst, "Allow", list, "lists", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			reg := prometheus.NewRegistry()
			e, _ := newTestEngine(t, EngineConfig{Policy: unvalidated(t, tc.onFail, tc.edit), Registerer: reg,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			for i := 0; i < 20; i++ {
				d := e.Decide(context.Background(), tc.request())
				if d.Allowed != tc.allowed {
					t.Fatalf("request %d: %+v, want allowed=%v", i, d, tc.allowed)
				}
				if !tc.allowed && (d.Code != http.StatusServiceUnavailable || !errors.Is(d.Err, ErrEngineFailure) || d.Rule != tc.rule) {
					t.Fatalf("request %d: %+v, want a 503 ErrEngineFailure naming %s", i, d, tc.rule)
				}
			}
			st := e.Status(context.Background(), 10)
			if len(st.Budgets) != 1 || len(st.RateLimits) != 1 {
				t.Fatalf("status: %+v", st)
			}
			if !strings.Contains(logs.String(), "cannot run; it follows its onStoreFailure") {
				t.Errorf("the unrunnable rule was not logged:\n%s", logs.String())
			}
			if n := testutil.ToFloat64(e.guard.panics); n != 20 {
				t.Errorf("decision_panics_total = %v, want 20", n)
			}
		})
	}
}

// TestStoresRefuseSpecsTheyCannotRun: a store handed such a spec directly
// returns an error, never panics, never answers wrong.
func TestStoresRefuseSpecsTheyCannotRun(t *testing.T) {
	var nine []WindowSpec
	for i := 1; i <= 9; i++ {
		nine = append(nine, WindowSpec{Length: time.Duration(i) * time.Minute, Limit: int64(i)})
	}
	s := NewMemoryStore(MemoryConfig{})
	if err := s.Budgets(context.Background(), &BudgetBatch{Checks: []BudgetCheck{{Spec: testSpec(nine, BreakerSpec{}), Key: "k"}}, Commit: true}); err == nil {
		t.Error("memory store judged a budget of 9 windows")
	}
	for _, r := range []*policy.RateLimit{{Name: "tiny", QPS: 1e-11, Burst: 1}, {Name: "huge", QPS: 1, Burst: 1e10}} {
		if err := s.Rates(context.Background(), &RateBatch{Checks: []RateCheck{{Spec: NewRateSpec(r), Key: "k"}}}); err == nil {
			t.Errorf("memory store judged rate limit %s (qps %v, burst %d)", r.Name, r.QPS, r.Burst)
		}
	}
}

// panickingStore panics on every call, like a store with a bug.
type panickingStore struct{}

func (panickingStore) Budgets(context.Context, *BudgetBatch) error { panic("bug in Budgets") }
func (panickingStore) Rates(context.Context, *RateBatch) error     { panic("bug in Rates") }
func (panickingStore) ResetBudget(context.Context, *BudgetSpec, string) error {
	panic("bug in ResetBudget")
}
func (panickingStore) ResetBudgetKeys(context.Context, *BudgetSpec, func(string) bool) ([]string, error) {
	panic("bug in ResetBudgetKeys")
}

// CarryBreakers and Retain do not panic: a reload calls them, and this store
// stands for a bug on the decision path.
func (panickingStore) CarryBreakers(context.Context, *BudgetSpec, *BudgetSpec) ([]string, error) {
	return nil, nil
}
func (panickingStore) Retain(map[string]bool, map[string]*BudgetSpec) {}
func (panickingStore) InspectBudget(context.Context, *BudgetSpec, int) ([]BudgetKeyStatus, error) {
	panic("bug in InspectBudget")
}
func (panickingStore) HottestRates(context.Context, *RateSpec, int) ([]RateKeyStatus, error) {
	panic("bug in HottestRates")
}

// TestEngineTurnsAPanicIntoTheRulesOnStoreFailure: a panic while deciding is
// no blanket 500: each matched rule fails the way its onStoreFailure says,
// the panic is counted per rule and logged once per policy hash.
func TestEngineTurnsAPanicIntoTheRulesOnStoreFailure(t *testing.T) {
	var logs logtest.Buffer
	reg := prometheus.NewRegistry()
	e, _ := newTestEngine(t, EngineConfig{Store: panickingStore{}, Registerer: reg, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx := context.Background()

	// pod-deletes says Local: judged on this replica's fallback (limit 3 a minute).
	for i := 0; i < 3; i++ {
		if d := e.Decide(ctx, podDelete("prod", "p")); !d.Allowed || !d.Fallback {
			t.Fatalf("pod delete %d: %+v, want admitted by the local fallback", i, d)
		}
	}
	if d := e.Decide(ctx, podDelete("prod", "p")); d.Allowed || d.Code != http.StatusForbidden || !d.Fallback {
		t.Fatalf("4th pod delete: %+v, want the local fallback's Manual breaker (403)", d)
	}
	// node-deletes says Deny.
	nodeDelete := &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "nodes", Name: "n1", User: "alice"}, Checks: CheckBudgets}
	if d := e.Decide(ctx, nodeDelete); d.Allowed || d.Code != http.StatusServiceUnavailable || !errors.Is(d.Err, ErrEngineFailure) || d.Rule != "node-deletes" {
		t.Fatalf("node delete: %+v, want 503 ErrEngineFailure from node-deletes", d)
	}
	// svc-deletes is Shadow with Allow; agent-lists defaults to Allow.
	if d := e.Decide(ctx, &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "services", Namespace: "prod", Name: "s"}, Checks: CheckBudgets}); !d.Allowed {
		t.Fatalf("service delete: %+v, want admitted (Allow)", d)
	}
	if d := e.Decide(ctx, &Attributes{Attributes: policy.Attributes{Verb: "list", Resource: "pods", User: "u", UserAgent: "node-agent/1"}, Front: FrontProxy}); !d.Allowed {
		t.Fatalf("agent list: %+v, want admitted (Allow)", d)
	}
	for _, c := range []struct {
		kind, rule string
		want       float64
	}{{"budget", "pod-deletes", 4}, {"budget", "node-deletes", 1}, {"budget", "svc-deletes", 1}, {"rateLimit", "agent-lists", 1}} {
		if got := testutil.ToFloat64(e.guard.panics.WithLabelValues(c.kind, c.rule)); got != c.want {
			t.Errorf("decision_panics_total{kind=%s,rule=%s} = %v, want %v", c.kind, c.rule, got, c.want)
		}
	}
	hash := e.Policy().Hash
	if n := strings.Count(logs.String(), "decision panicked"); n != 1 || !strings.Contains(logs.String(), "policyHash="+hash) {
		t.Fatalf("panic logged %d times (want once, with policyHash=%s):\n%s", n, hash, logs.String())
	}
	// A new policy is logged again, once.
	setPolicy(t, e, parse(t, strings.Replace(enginePolicy, "limit: 10}", "limit: 11}", 1)))
	e.Decide(ctx, podDelete("prod", "q"))
	e.Decide(ctx, podDelete("prod", "q"))
	if n := strings.Count(logs.String(), "decision panicked"); n != 2 {
		t.Fatalf("after a reload the panic was logged %d times in all, want 2", n)
	}
}
