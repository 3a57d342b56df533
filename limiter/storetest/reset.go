package storetest

import (
	"context"
	"net/http"
	"strings"
	"testing"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/internal/limitertest"
	"github.com/kubedefender/kubedefender/policy"
)

// testResetIsScoped: a resetBreaker override
// scoped to namespaces (or users) closes only the breakers of those keys, for
// budgets keyed per [namespace, user] in either order too; before, every key
// of such a budget was reset.
func testResetIsScoped(t *testing.T, newStore NewStore) {
	type who struct{ ns, user string }
	cases := []struct {
		name      string
		per       string
		override  limiter.Override
		wantReset []who
	}{
		{"namespaces on per [namespace, user]", "[namespace, user]", limiter.Override{Namespaces: []string{"prod"}},
			[]who{{"prod", "alice"}, {"prod", "bob,user=x"}}},
		{"namespaces on per [user, namespace]", "[user, namespace]", limiter.Override{Namespaces: []string{"prod"}},
			[]who{{"prod", "alice"}, {"prod", "bob,user=x"}}},
		{"users on per [namespace, user]", "[namespace, user]", limiter.Override{Users: []string{"alice"}},
			[]who{{"prod", "alice"}, {"dev", "alice"}}},
		{"namespaces and users name exact keys", "[user, namespace]", limiter.Override{Namespaces: []string{"dev"}, Users: []string{"alice"}},
			[]who{{"dev", "alice"}}},
		{"namespaces on per [namespace]", "[namespace]", limiter.Override{Namespaces: []string{"prod"}},
			[]who{{"prod", "alice"}, {"prod", "bob,user=x"}}},
		{"users on per [namespace] reset every key", "[namespace]", limiter.Override{Users: []string{"alice"}},
			[]who{{"prod", "alice"}, {"prod", "bob,user=x"}, {"dev", "alice"}, {"dev", "carol"}}},
	}
	everyone := []who{{"prod", "alice"}, {"prod", "bob,user=x"}, {"dev", "alice"}, {"dev", "carol"}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(Epoch)
			e, err := limiter.NewEngine(limiter.EngineConfig{Store: newStore(t, clk), Fallback: limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk}), Clock: clk,
				Policy: limitertest.Parse(t, strings.Replace(limitertest.ReloadPolicy, "per: [namespace]", "per: "+tc.per, 1))})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			del := func(w who) limiter.Decision {
				return e.Decide(ctx, &limiter.Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "pods", Namespace: w.ns, Name: "p", User: w.user}, Checks: limiter.CheckBudgets})
			}
			for _, w := range everyone {
				for i := 0; i < 3; i++ { // limit 2: the 3rd opens the Manual breaker
					del(w)
				}
			}
			o := tc.override
			o.Name, o.Budgets, o.ResetBreaker = "o", []string{"pod-deletes"}, true
			if err := e.ResetBreakers(ctx, &o); err != nil {
				t.Fatal(err)
			}
			for _, w := range everyone {
				reset := false
				for _, r := range tc.wantReset {
					reset = reset || r == w
				}
				// per [namespace]: a key is a namespace, shared by its users
				if tc.per == "[namespace]" {
					for _, r := range tc.wantReset {
						reset = reset || r.ns == w.ns
					}
				}
				d := del(w)
				if reset && !d.Allowed {
					t.Errorf("%s/%s: %s, want its breaker reset", w.ns, w.user, d.Message)
				}
				if !reset && (d.Allowed || d.Code != http.StatusForbidden) {
					t.Errorf("%s/%s: %+v, want its breaker still Open (403): the override's scope does not cover it", w.ns, w.user, d)
				}
			}
		})
	}
}
