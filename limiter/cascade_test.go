package limiter

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kubedefender/kubedefender/policy"
)

const cascadePolicy = `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  budgets:
  - name: pods-down
    match: {verbs: [delete, deletecollection, evict], resources: [pods]}
    exclude: {users: [robot]}
    per: [namespace]
    cascades: AtRoot
    windows: [{window: 1m, limit: 20}, {window: 1h, limit: 200}]
    breaker: {recovery: Manual}
  - name: pods-per-user
    match: {verbs: [delete], resources: [pods]}
    per: [user]
    cascades: AtRoot
    windows: [{window: 1m, limit: 50}]
  - name: services-down
    match: {verbs: [delete], resources: [services]}
    per: [namespace]
    cascades: AtRoot
    windows: [{window: 1m, limit: 5}]
  - name: pod-deletes-each
    match: {verbs: [delete], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: 3}]
`

func nsDelete(ns, user string, removes ...Removal) *Attributes {
	return &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "namespaces", Name: ns, User: user}, Checks: CheckBudgets, Removes: removes}
}

func pods(ns string, n int64) Removal { return Removal{Resource: "pods", Namespace: ns, Count: n} }

// used reads a budget key's use of its first window without charging.
func used(t *testing.T, e *Engine, rule, key string) int64 {
	t.Helper()
	for _, r := range e.state.Load().budgets {
		if r.cb.Name == rule {
			b := &BudgetBatch{Checks: []BudgetCheck{{Spec: r.spec, Key: key}}}
			if err := e.store.Budgets(context.Background(), b); err != nil {
				t.Fatal(err)
			}
			return b.Results[0].Used[0]
		}
	}
	t.Fatalf("no budget %s", rule)
	return 0
}

func TestCascadeNamespaceDeleteIsChargedWhatItRemoves(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{Policy: parse(t, cascadePolicy)})
	ctx := context.Background()
	d := e.Decide(ctx, nsDelete("small", "alice", pods("small", 12), Removal{Resource: "services", Namespace: "small", Count: 2}))
	if !d.Allowed || !d.Charged {
		t.Fatalf("12-pod namespace: %+v, want admitted and charged", d)
	}
	for _, c := range []struct {
		rule, key string
		want      int64
	}{
		{"pods-down", "namespace=small", 12},
		{"pods-per-user", "user=alice", 12},
		{"services-down", "namespace=small", 2},
		{"pod-deletes-each", "namespace=small", 0}, // PerObject ignores Removes
	} {
		if got := used(t, e, c.rule, c.key); got != c.want {
			t.Errorf("%s %s: %d used, want %d", c.rule, c.key, got, c.want)
		}
	}
	// The namespace controller's pod deletes that follow are free for
	// AtRoot budgets; PerObject budgets judge them as always.
	gc := podDelete("small", "p1")
	gc.User, gc.FollowUp = "system:serviceaccount:kube-system:namespace-controller", true
	if d := e.Decide(ctx, gc); !d.Allowed || !d.FollowUp {
		t.Fatalf("follow-up: %+v, want admitted free", d)
	}
	if got := used(t, e, "pods-down", "namespace=small"); got != 12 {
		t.Fatalf("after a follow-up pods-down has %d used, want still 12", got)
	}
	if got := used(t, e, "pod-deletes-each", "namespace=small"); got != 1 {
		t.Fatalf("the PerObject budget was charged %d for the follow-up, want 1", got)
	}
	if got := testutil.ToFloat64(e.metrics.decisions.WithLabelValues("webhook", "budget", "pods-down", "cascade")); got != 1 {
		t.Fatalf(`decisions{result="cascade"} = %v, want 1`, got)
	}
}

func TestCascadeRootThatDoesNotFitIsDeniedWhole(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{Policy: parse(t, cascadePolicy)})
	ctx := context.Background()
	d := e.Decide(ctx, nsDelete("prod", "alice", pods("prod", 312)))
	if d.Allowed || d.Rule != "pods-down" || d.Key != "namespace=prod" || d.Cost != 312 || !errors.Is(d.Err, ErrBreakerOpen) || d.Code != 403 {
		t.Fatalf("312-pod namespace: %+v, want denied by pods-down namespace=prod, cost 312, Manual breaker tripped", d)
	}
	for _, want := range []string{`deleting namespace "prod" removes 312 pods`, `budget "pods-down" (key namespace=prod)`,
		"has 20 left in 1m", "more than the window ever holds", "breaker tripped",
		"kubedefender breakglass grant --budget pods-down --namespace prod --for 30m"} {
		if !strings.Contains(d.Message, want) {
			t.Errorf("message lacks %q:\n%s", want, d.Message)
		}
	}
	for _, k := range [][2]string{{"pods-down", "namespace=prod"}, {"pods-per-user", "user=alice"}} {
		if got := used(t, e, k[0], k[1]); got != 0 {
			t.Errorf("a denied root charged %s %s: %d", k[0], k[1], got)
		}
	}
	// The tripped breaker stops single pod deletes in prod too.
	if d := e.Decide(ctx, podDelete("prod", "x")); d.Allowed || !errors.Is(d.Err, ErrBreakerOpen) {
		t.Fatalf("pod delete after the trip: %+v, want the open breaker", d)
	}
	// A break-glass override for the namespace lets the root through whole.
	e.SetOverrides([]Override{{Name: "bg", Budgets: []string{"pods-down", "pods-per-user"}, Namespaces: []string{"prod"}, ExpiresAt: testEpoch.Add(time.Hour)}})
	if d := e.Decide(ctx, nsDelete("prod", "alice", pods("prod", 312))); !d.Allowed || d.Override != "bg" {
		t.Fatalf("with the override: %+v, want admitted by it", d)
	}
}

func TestCascadeMatchesEachRemovalAsADelete(t *testing.T) {
	cases := []struct {
		name     string
		req      *Attributes
		allowed  bool
		rule     string
		key      string
		wantUsed map[[2]string]int64
	}{
		{
			name: "a node delete is charged in each namespace its pods are in",
			req: &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "nodes", Name: "n1", User: "ops"}, Checks: CheckBudgets,
				Removes: []Removal{pods("a", 7), pods("b", 3)}},
			allowed:  true,
			wantUsed: map[[2]string]int64{{"pods-down", "namespace=a"}: 7, {"pods-down", "namespace=b"}: 3, {"pods-per-user", "user=ops"}: 10},
		},
		{
			name: "removals in one key add up, and the sum is judged",
			req: &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "nodes", Name: "n1", User: "ops"}, Checks: CheckBudgets,
				Removes: []Removal{pods("a", 15), pods("a", 6)}},
			rule: "pods-down", key: "namespace=a",
			wantUsed: map[[2]string]int64{{"pods-down", "namespace=a"}: 0, {"pods-per-user", "user=ops"}: 0},
		},
		{
			name: "all or nothing across budgets: the per-user budget denies, no namespace is charged",
			req: &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "nodes", Name: "n1", User: "ops"}, Checks: CheckBudgets,
				Removes: []Removal{pods("a", 20), pods("b", 20), pods("c", 20)}},
			rule: "pods-per-user", key: "user=ops",
			wantUsed: map[[2]string]int64{{"pods-down", "namespace=a"}: 0, {"pods-down", "namespace=b"}: 0},
		},
		{
			name:     "an excluded user's removals are not counted by the budget that excludes it",
			req:      nsDelete("prod", "robot", pods("prod", 40)),
			allowed:  true,
			wantUsed: map[[2]string]int64{{"pods-down", "namespace=prod"}: 0, {"pods-per-user", "user=robot"}: 40},
		},
		{
			name:     "a services budget counts the services a namespace delete removes",
			req:      nsDelete("prod", "alice", Removal{Resource: "services", Namespace: "prod", Count: 6}),
			rule:     "services-down",
			key:      "namespace=prod",
			wantUsed: map[[2]string]int64{{"services-down", "namespace=prod"}: 0},
		},
		{
			name:     "removals of another API group do not match a core budget",
			req:      nsDelete("prod", "alice", Removal{APIGroup: "example.com", Resource: "pods", Namespace: "prod", Count: 400}),
			allowed:  true,
			wantUsed: map[[2]string]int64{{"pods-down", "namespace=prod"}: 0},
		},
		{
			name:     "a dry run is judged and takes nothing",
			req:      func() *Attributes { a := nsDelete("prod", "alice", pods("prod", 12)); a.DryRun = true; return a }(),
			allowed:  true,
			wantUsed: map[[2]string]int64{{"pods-down", "namespace=prod"}: 0},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, _ := newTestEngine(t, EngineConfig{Policy: parse(t, cascadePolicy)})
			d := e.Decide(context.Background(), c.req)
			if d.Allowed != c.allowed || d.Rule != c.rule || d.Key != c.key {
				t.Fatalf("decision %+v, want allowed=%v rule=%q key=%q", d, c.allowed, c.rule, c.key)
			}
			for k, want := range c.wantUsed {
				if got := used(t, e, k[0], k[1]); got != want {
					t.Errorf("%s %s: %d used, want %d", k[0], k[1], got, want)
				}
			}
		})
	}
}

func TestCascadePlainPodDeleteCostsOneAndRepeatsAreFree(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{Policy: parse(t, cascadePolicy)})
	ctx := context.Background()
	a := podDelete("prod", "p")
	a.ChargeOnce = "uid-1"
	for i := 0; i < 3; i++ {
		if d := e.Decide(ctx, a); !d.Allowed {
			t.Fatalf("validation %d: %s", i, d.Message)
		}
	}
	if got := used(t, e, "pods-down", "namespace=prod"); got != 1 {
		t.Fatalf("a pod delete validated 3 times: %d used, want 1", got)
	}
	root := nsDelete("prod", "alice", pods("prod", 5))
	root.ChargeOnce = "ns-uid"
	e.Decide(ctx, root)
	e.Decide(ctx, root)
	if got := used(t, e, "pods-down", "namespace=prod"); got != 6 {
		t.Fatalf("a root validated twice: %d used, want 1+5", got)
	}
}

func TestCascadeRootsAreJudgedWhenThePolicySkippedValidation(t *testing.T) {
	for _, onFail := range []string{"Deny", "Allow"} {
		t.Run("onStoreFailure "+onFail, func(t *testing.T) {
			c := parse(t, strings.Replace(cascadePolicy, "    breaker: {recovery: Manual}\n", "    breaker: {recovery: Manual}\n    onStoreFailure: "+onFail+"\n", 1))
			// A ninth window: the stores cannot run pods-down, so Decide goes rule by rule.
			b := c.Budgets[0].Budget
			for len(b.Windows) <= MaxWindows {
				b.Windows = append(b.Windows, policy.Window{Window: policy.Duration{Duration: time.Duration(len(b.Windows)+2) * time.Hour}, Limit: 1000})
			}
			e, _ := newTestEngine(t, EngineConfig{Policy: c})
			ctx := context.Background()
			d := e.Decide(ctx, nsDelete("prod", "alice", pods("prod", 3)))
			if want := onFail == "Allow"; d.Allowed != want || (!want && (d.Rule != "pods-down" || !errors.Is(d.Err, ErrEngineFailure))) {
				t.Fatalf("a root under a broken AtRoot budget: %+v, want allowed=%v by its onStoreFailure", d, want)
			}
			if onFail == "Allow" {
				// The other AtRoot budgets still charge the root, one by one.
				if got := used(t, e, "pods-per-user", "user=alice"); got != 3 {
					t.Fatalf("pods-per-user: %d used, want 3", got)
				}
			}
			follow := podDelete("prod", "p")
			follow.FollowUp = true
			if d := e.Decide(ctx, follow); !d.Allowed {
				t.Fatalf("a follow-up under a broken AtRoot budget: %+v, want free", d)
			}
		})
	}
}

func TestCascadeRootAboveMaxCostIsDeniedWhateverTheLimit(t *testing.T) {
	e, _ := newTestEngine(t, EngineConfig{Policy: parse(t, `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  budgets:
  - name: roomy
    match: {verbs: [delete], resources: [pods]}
    per: [namespace]
    cascades: AtRoot
    windows: [{window: 1m, limit: 1000000000}]
`)})
	ctx := context.Background()
	if d := e.Decide(ctx, nsDelete("big", "alice", pods("big", MaxCost))); !d.Allowed {
		t.Fatalf("a root of MaxCost pods: %s", d.Message)
	}
	d := e.Decide(ctx, nsDelete("huge", "alice", pods("huge", MaxCost+1)))
	if d.Allowed || d.Cost != MaxCost+1 || !strings.Contains(d.Message, "more than one request may take from a budget key (16384)") ||
		!strings.Contains(d.Message, "breakglass grant --budget roomy --namespace huge") {
		t.Fatalf("a root above MaxCost: %+v, want denied, saying why, with the break-glass command", d)
	}
}
