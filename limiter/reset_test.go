package limiter

import (
	"context"
	"net/http"
	"strings"
	"testing"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
	"github.com/kubedefender/kubedefender/policy"
)

// TestResetBreakerResetsOnlyTheKeysItsScopeCovers: a resetBreaker override
// scoped to namespaces (or users) closes only the breakers of those keys, for
// budgets keyed per [namespace, user] in either order too; before, every key
// of such a budget was reset. Both stores.
func TestResetBreakerResetsOnlyTheKeysItsScopeCovers(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	stores := []struct {
		name string
		new  func(t *testing.T, clk *clocktesting.FakeClock) Store
	}{
		{"memory", func(t *testing.T, clk *clocktesting.FakeClock) Store { return NewMemoryStore(MemoryConfig{Clock: clk}) }},
		{"redis", redisFactory(singleOpts(srv), nil)},
	}
	type who struct{ ns, user string }
	cases := []struct {
		name      string
		per       string
		override  Override
		wantReset []who
	}{
		{"namespaces on per [namespace, user]", "[namespace, user]", Override{Namespaces: []string{"prod"}},
			[]who{{"prod", "alice"}, {"prod", "bob,user=x"}}},
		{"namespaces on per [user, namespace]", "[user, namespace]", Override{Namespaces: []string{"prod"}},
			[]who{{"prod", "alice"}, {"prod", "bob,user=x"}}},
		{"users on per [namespace, user]", "[namespace, user]", Override{Users: []string{"alice"}},
			[]who{{"prod", "alice"}, {"dev", "alice"}}},
		{"namespaces and users name exact keys", "[user, namespace]", Override{Namespaces: []string{"dev"}, Users: []string{"alice"}},
			[]who{{"dev", "alice"}}},
		{"namespaces on per [namespace]", "[namespace]", Override{Namespaces: []string{"prod"}},
			[]who{{"prod", "alice"}, {"prod", "bob,user=x"}}},
		{"users on per [namespace] reset every key", "[namespace]", Override{Users: []string{"alice"}},
			[]who{{"prod", "alice"}, {"prod", "bob,user=x"}, {"dev", "alice"}, {"dev", "carol"}}},
	}
	everyone := []who{{"prod", "alice"}, {"prod", "bob,user=x"}, {"dev", "alice"}, {"dev", "carol"}}
	for _, sc := range stores {
		for _, tc := range cases {
			t.Run(sc.name+"/"+tc.name, func(t *testing.T) {
				clk := clocktesting.NewFakeClock(testEpoch)
				e, err := NewEngine(EngineConfig{Store: sc.new(t, clk), Fallback: NewMemoryStore(MemoryConfig{Clock: clk}), Clock: clk,
					Policy: parse(t, strings.Replace(reloadPolicy, "per: [namespace]", "per: "+tc.per, 1))})
				if err != nil {
					t.Fatal(err)
				}
				ctx := context.Background()
				del := func(w who) Decision {
					return e.Decide(ctx, &Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "pods", Namespace: w.ns, Name: "p", User: w.user}, Checks: CheckBudgets})
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
}

func TestParseBudgetKey(t *testing.T) {
	cases := []struct {
		name string
		per  []string
		key  string
		want []string
	}{
		{"namespace then user", []string{"namespace", "user"}, "namespace=prod,user=alice", []string{"prod", "alice"}},
		{"a user name with commas and equals signs", []string{"namespace", "user"}, "namespace=prod,user=a,user=b", []string{"prod", "a,user=b"}},
		{"user then namespace", []string{"user", "namespace"}, "user=a,namespace=x,namespace=prod", []string{"a,namespace=x", "prod"}},
		{"one dimension", []string{"user"}, "user=a,b", []string{"a,b"}},
		{"a key of another layout does not parse", []string{"namespace", "user"}, "user=a", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseBudgetKey(tc.per, tc.key)
			if !ok {
				got = nil
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") || (got == nil) != (tc.want == nil) {
				t.Fatalf("parseBudgetKey(%v, %q) = %q, want %q", tc.per, tc.key, got, tc.want)
			}
		})
	}
}
