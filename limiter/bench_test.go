package limiter

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/policy"
)

// benchPolicy has 20 budgets and 10 rate limits with varied matches, most of
// which do not match the benchmark's requests — like a real policy.
func benchPolicy() string {
	var b strings.Builder
	b.WriteString("apiVersion: kubedefender.io/v1alpha1\nkind: DefenderPolicy\nmetadata: {name: bench}\nspec:\n  budgets:\n")
	resources := []string{"pods", "services", "nodes", "namespaces", "apps/deployments", "apps/statefulsets", "apps/daemonsets", "secrets", "persistentvolumeclaims", "batch/jobs"}
	for i := 0; i < 20; i++ {
		r := resources[i%len(resources)]
		fmt.Fprintf(&b, "  - name: budget-%d\n    match: {verbs: [delete, deletecollection], resources: [%q], namespaces: [ns-%d, ns-%d]}\n", i, r, i, i+100)
		fmt.Fprintf(&b, "    exclude: {users: [\"system:serviceaccount:kube-system:generic-garbage-collector\"]}\n")
		fmt.Fprintf(&b, "    per: [namespace]\n    windows: [{window: 1m, limit: 20}, {window: 5m, limit: 50}, {window: 1h, limit: 200}, {window: 24h, limit: 1000}]\n    breaker: {recovery: Manual}\n")
	}
	// The one budget the benchmark's delete matches, roomy enough never to deny.
	b.WriteString("  - name: cm-deletes\n    match: {verbs: [delete], resources: [configmaps]}\n    per: [namespace]\n    windows: [{window: 1m, limit: 1000000000}, {window: 5m, limit: 1000000000}, {window: 1h, limit: 1000000000}, {window: 24h, limit: 1000000000}]\n")
	b.WriteString("  rateLimits:\n")
	for i := 0; i < 9; i++ {
		fmt.Fprintf(&b, "  - name: rate-%d\n    match: {verbs: [list, watch], userAgents: [\"^agent-%d/\"]}\n    per: [user, userAgent]\n    qps: 20\n    burst: 40\n", i, i)
	}
	b.WriteString("  - name: node-agents\n    match: {verbs: [get, list, watch], userAgents: [\"^node-agent/\"]}\n    per: [user, userAgent]\n    qps: 1000000\n    burst: 1000000\n")
	return b.String()
}

func benchEngine(b *testing.B) *Engine {
	c, err := policy.Parse("bench.yaml", []byte(benchPolicy()))
	if err != nil {
		b.Fatal(err)
	}
	e, err := NewEngine(EngineConfig{Policy: c, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	return e
}

// BenchmarkDecide measures one decision on the memory store with a 31-rule
// policy. Target: ≤ 1 µs and 0 allocations on the allow path.
func BenchmarkDecide(b *testing.B) {
	cases := []struct {
		name string
		a    Attributes
	}{
		{"list matching one rate limit", Attributes{Attributes: policy.Attributes{Verb: "list", Resource: "pods", Namespace: "prod", User: "system:node:n1", UserAgent: "node-agent/1.2 (linux)"}, Front: FrontProxy}},
		{"get matching nothing", Attributes{Attributes: policy.Attributes{Verb: "get", Resource: "secrets", Namespace: "prod", User: "alice", UserAgent: "kubectl/v1.32.4"}, Front: FrontProxy}},
		{"delete charging one 4-window budget", Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "configmaps", Namespace: "prod", Name: "c", User: "alice"}, Checks: CheckBudgets}},
	}
	for _, tc := range cases {
		b.Run(strings.ReplaceAll(tc.name, " ", "_"), func(b *testing.B) {
			e := benchEngine(b)
			ctx := context.Background()
			a := tc.a
			b.ReportAllocs()
			for b.Loop() {
				if d := e.Decide(ctx, &a); !d.Allowed {
					b.Fatal(d.Message)
				}
			}
		})
	}
	b.Run("namespace_delete_judged_by_an_AtRoot_budget_(dry_run)", func(b *testing.B) {
		c, err := policy.Parse("bench.yaml", []byte(strings.Replace(benchPolicy(),
			"  - name: cm-deletes\n", "  - name: pods-down\n    match: {verbs: [delete], resources: [pods]}\n    per: [namespace]\n    cascades: AtRoot\n    windows: [{window: 1m, limit: 1000}, {window: 1h, limit: 5000}]\n  - name: cm-deletes\n", 1)))
		if err != nil {
			b.Fatal(err)
		}
		e, err := NewEngine(EngineConfig{Policy: c, Registerer: prometheus.NewRegistry()})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		a := Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "namespaces", Name: "prod", User: "alice", DryRun: true}, Checks: CheckBudgets,
			Removes: []Removal{{Resource: "pods", Namespace: "prod", Count: 312}, {Resource: "services", Namespace: "prod", Count: 4}}}
		b.ReportAllocs()
		for b.Loop() {
			if d := e.Decide(ctx, &a); !d.Allowed {
				b.Fatal(d.Message)
			}
		}
	})
	b.Run("parallel_list", func(b *testing.B) {
		e := benchEngine(b)
		ctx := context.Background()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			a := cases[0].a
			for pb.Next() {
				e.Decide(ctx, &a)
			}
		})
	})
}

// BenchmarkMemoryPerIdleKey reports the heap held per key after many distinct
// keys each made one request and went idle.
func BenchmarkMemoryPerIdleKey(b *testing.B) {
	const keys = 100000
	// perKey reports the heap a new memory store holds after charge(s, i)
	// for every key i.
	perKey := func(b *testing.B, charge func(s *MemoryStore, i int)) {
		heap := func() uint64 {
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			return m.HeapAlloc
		}
		for b.Loop() {
			clk := clocktesting.NewFakeClock(testEpoch)
			s := NewMemoryStore(MemoryConfig{Clock: clk, MaxKeysPerRule: 2 * keys})
			before := heap()
			for i := 0; i < keys; i++ {
				charge(s, i)
			}
			after := heap()
			b.ReportMetric(float64(after-before)/keys, "B/key")
			runtime.KeepAlive(s)
		}
	}
	b.Run("budget_4_windows", func(b *testing.B) {
		spec := testSpec([]WindowSpec{{time.Minute, 20}, {5 * time.Minute, 50}, {time.Hour, 200}, {24 * time.Hour, 1000}}, BreakerSpec{Enabled: true, Manual: true})
		batch := &BudgetBatch{Commit: true, Checks: make([]BudgetCheck, 1)}
		perKey(b, func(s *MemoryStore, i int) {
			batch.Checks[0] = BudgetCheck{Spec: spec, Key: fmt.Sprintf("namespace=tenant-%06d", i)}
			_ = s.Budgets(context.Background(), batch)
		})
	})
	b.Run("rate_limit", func(b *testing.B) {
		spec := &RateSpec{Name: "r", ID: "r@mem", QPS: 10, Burst: 20, Interval: 100 * time.Millisecond}
		batch := &RateBatch{Checks: make([]RateCheck, 1)}
		perKey(b, func(s *MemoryStore, i int) {
			batch.Checks[0] = RateCheck{Spec: spec, Key: fmt.Sprintf("user=u%06d,userAgent=kubectl/v1.32", i)}
			_ = s.Rates(context.Background(), batch)
		})
	})
}
