package limiter

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter/internal/limitertest"
	"github.com/kubedefender/kubedefender/policy"
)

// TestBudgetGaugesFollowTheStore: the remaining ratio of a per-namespace
// budget read 0 from startup and never recovered (it was only set for
// cluster-wide budgets, after an admitted request); it now follows the
// store's keys on each refresh, and breakers_open counts Open breakers.
func TestBudgetGaugesFollowTheStore(t *testing.T) {
	reg := prometheus.NewRegistry()
	e, clk := newTestEngine(t, EngineConfig{Registerer: reg})
	ctx := context.Background()

	e.RefreshMetrics(ctx)
	limitertest.CheckGauges(t, reg, "before any request", limitertest.EngineGauges{NodeOpen: 0, PodOpen: 0, Node1m: 1, Pod1h: 1, Pod1m: 1, Svc1m: 1}.Series())

	for _, ns := range []string{"a", "a", "b"} {
		if d := e.Decide(ctx, podDelete(ns, "p")); !d.Allowed {
			t.Fatalf("delete in %s denied: %s", ns, d.Message)
		}
	}
	e.RefreshMetrics(ctx)
	limitertest.CheckGauges(t, reg, "after two deletes in namespace a and one in b", limitertest.EngineGauges{NodeOpen: 0, PodOpen: 0, Node1m: 1, Pod1h: 0.8, Pod1m: 0.3333333333333333, Svc1m: 1}.Series())

	clk.Step(2 * time.Minute)
	e.RefreshMetrics(ctx)
	limitertest.CheckGauges(t, reg, "two minutes later the 1m window has recovered", limitertest.EngineGauges{NodeOpen: 0, PodOpen: 0, Node1m: 1, Pod1h: 0.8, Pod1m: 1, Svc1m: 1}.Series())

	for i := 0; i < 4; i++ { // the 4th trips namespace c's Manual breaker
		e.Decide(ctx, podDelete("c", "p"))
	}
	node := &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "nodes", Name: "n", User: "alice"}, Checks: CheckBudgets}
	for i := 0; i < 3; i++ { // the 3rd trips the cluster-wide Auto breaker
		e.Decide(ctx, node)
	}
	e.RefreshMetrics(ctx)
	limitertest.CheckGauges(t, reg, "with namespace c's Manual breaker and the node breaker Open", limitertest.EngineGauges{NodeOpen: 1, PodOpen: 1, Node1m: 0, Pod1h: 0, Pod1m: 0, Svc1m: 1}.Series())

	clk.Step(10 * time.Minute) // the Auto breaker is HalfOpen after its cooldown; the Manual one stays Open
	e.RefreshMetrics(ctx)
	limitertest.CheckGauges(t, reg, "after the Auto cooldown", limitertest.EngineGauges{NodeOpen: 0, PodOpen: 1, Node1m: 1, Pod1h: 0, Pod1m: 0, Svc1m: 1}.Series())

	// A reload that removes rules removes their gauges at once.
	podOnly, _, _ := strings.Cut(enginePolicy, "  - name: node-deletes")
	setPolicy(t, e, parse(t, strings.Replace(podOnly, "metadata: {name: test}", "metadata: {name: test2}", 1)))
	limitertest.CheckGauges(t, reg, "after a reload that keeps only pod-deletes", `
kubedefender_limiter_breakers_open{recovery="Manual",rule="pod-deletes"} 1
kubedefender_limiter_budget_remaining_ratio{rule="pod-deletes",window="1h"} 0
kubedefender_limiter_budget_remaining_ratio{rule="pod-deletes",window="1m"} 0
`)
}

// failingInspector is a store whose status reads fail (Redis unreachable).
type failingInspector struct {
	Store
	fail bool
}

func (f *failingInspector) InspectBudget(ctx context.Context, spec *BudgetSpec, limit int) ([]BudgetKeyStatus, error) {
	if f.fail {
		return nil, ErrStoreUnavailable
	}
	return f.Store.InspectBudget(ctx, spec, limit)
}

func (f *failingInspector) HottestRates(ctx context.Context, spec *RateSpec, limit int) ([]RateKeyStatus, error) {
	return nil, ErrStoreUnavailable
}

func TestBudgetGaugesKeepTheLastReadWhileTheStoreIsUnreachable(t *testing.T) {
	reg := prometheus.NewRegistry()
	clk := clocktesting.NewFakeClock(testEpoch)
	store := &failingInspector{Store: NewMemoryStore(MemoryConfig{Clock: clk})}
	e, err := NewEngine(EngineConfig{Policy: parse(t, enginePolicy), Store: store, Fallback: NewMemoryStore(MemoryConfig{Clock: clk}), Clock: clk, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 4; i++ { // trips namespace c's Manual breaker
		e.Decide(ctx, podDelete("c", "p"))
	}
	e.RefreshMetrics(ctx)
	store.fail = true
	clk.Step(2 * time.Minute)
	e.RefreshMetrics(ctx)
	limitertest.CheckGauges(t, reg, "during an outage", limitertest.EngineGauges{NodeOpen: 0, PodOpen: 1, Node1m: 1, Pod1h: 0, Pod1m: 0, Svc1m: 1}.Series())
}

// TestDecisionSeriesExistOnlyForTheFrontsTheProcessRuns: a webhook-only
// process exported proxy and explain series (and webhook rate-limit series)
// that could never move.
func TestDecisionSeriesExistOnlyForTheFrontsTheProcessRuns(t *testing.T) {
	reg := prometheus.NewRegistry()
	e, _ := newTestEngine(t, EngineConfig{Registerer: reg})
	e.DeclareFronts(FrontWebhook)
	series := func() []string {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, mf := range mfs {
			if mf.GetName() != "kubedefender_limiter_decisions_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				l := map[string]string{}
				for _, lp := range m.GetLabel() {
					l[lp.GetName()] = lp.GetValue()
				}
				seen[l["front"]+"/"+l["kind"]+"/"+l["rule"]] = true
			}
		}
		var out []string
		for k := range seen {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	want := "[webhook/budget/node-deletes webhook/budget/pod-deletes webhook/budget/svc-deletes]"
	if got := series(); strings.Join(got, " ") != strings.Trim(want, "[]") {
		t.Errorf("a webhook-only engine exports %v, want %s", got, want)
	}

	// A reload's new rules get the declared fronts' series; a front that
	// decides without being declared (explain) gets the series it used.
	setPolicy(t, e, parse(t, strings.Replace(enginePolicy, "name: svc-deletes", "name: cm-deletes", 1)))
	e.Decide(context.Background(), &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "pods", Namespace: "a", User: "u"}, Front: FrontExplain})
	want = "[explain/budget/pod-deletes webhook/budget/cm-deletes webhook/budget/node-deletes webhook/budget/pod-deletes]"
	if got := series(); strings.Join(got, " ") != strings.Trim(want, "[]") {
		t.Errorf("after a reload and an explain: %v, want %s", got, want)
	}

	// A proxy declared later gets its series, rate limits included.
	e.DeclareFronts(FrontProxy)
	want = "[explain/budget/pod-deletes proxy/budget/cm-deletes proxy/budget/node-deletes proxy/budget/pod-deletes proxy/rateLimit/agent-lists webhook/budget/cm-deletes webhook/budget/node-deletes webhook/budget/pod-deletes]"
	if got := series(); strings.Join(got, " ") != strings.Trim(want, "[]") {
		t.Errorf("after declaring the proxy: %v, want %s", got, want)
	}
}
