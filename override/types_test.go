package override

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubedefender/kubedefender/internal/errtest"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

const testPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: t}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods]}
    windows: [{window: 1m, limit: 20}]
  rateLimits:
  - name: agent-lists
    match: {verbs: [list]}
    qps: 5
  breakGlass: {maxDuration: 1h}
`

func TestCheck(t *testing.T) {
	p, err := policy.Parse("t.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	created := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	mk := func(mut func(*Override)) *Override {
		o := &Override{ObjectMeta: metav1.ObjectMeta{Name: "o", Namespace: "kubedefender-system", CreationTimestamp: metav1.NewTime(created)},
			Spec: Spec{Budgets: []string{"pod-deletes"}, ExpiresAt: metav1.NewTime(created.Add(30 * time.Minute)), Reason: "INC-1: drain", RequestedBy: "alice"}}
		mut(o)
		return o
	}
	cases := []struct {
		name    string
		o       *Override
		wantErr []string
	}{
		{"a well-formed override within maxDuration is accepted", mk(func(*Override) {}), nil},
		{"a wildcard targets every budget", mk(func(o *Override) { o.Spec.Budgets = []string{"*"} }), nil},
		{"an override longer than maxDuration is refused", mk(func(o *Override) { o.Spec.ExpiresAt = metav1.NewTime(created.Add(3 * time.Hour)) }),
			[]string{"3h0m0s after creation, longer than breakGlass.maxDuration (1h)"}},
		{"an override without a reason is refused", mk(func(o *Override) { o.Spec.Reason = " " }), []string{"spec.reason is required"}},
		{"an unknown budget is refused with the names the policy has", mk(func(o *Override) { o.Spec.Budgets = []string{"pod-delets"} }),
			[]string{`the policy has no budget "pod-delets" (it has: pod-deletes)`}},
		{"an override naming nothing is refused", mk(func(o *Override) { o.Spec.Budgets = nil }), []string{"name at least one budget or rate limit"}},
		{"every problem is reported at once", mk(func(o *Override) { o.Spec.Reason = ""; o.Spec.RateLimits = []string{"nope"} }),
			[]string{"spec.reason is required", `no rate limit "nope"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			errtest.Want(t, Check(tc.o, p), tc.wantErr...)
		})
	}
}

func TestRoundTripThroughUnstructured(t *testing.T) {
	exp := metav1.NewTime(time.Date(2026, 1, 1, 12, 30, 0, 0, time.UTC))
	o := &Override{ObjectMeta: metav1.ObjectMeta{Name: "o", Namespace: "ns"},
		Spec: Spec{Budgets: []string{"a"}, RateLimits: []string{"b"}, Namespaces: []string{"prod"}, Users: []string{"u"}, ExpiresAt: exp, Reason: "r!!", RequestedBy: "me", ResetBreaker: true}}
	u, err := o.ToUnstructured()
	if err != nil {
		t.Fatal(err)
	}
	if u.GetKind() != Kind || u.GetAPIVersion() != APIVersion {
		t.Fatalf("kind %s apiVersion %s", u.GetKind(), u.GetAPIVersion())
	}
	back, err := FromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	got, want := back.Limiter(), (limiter.Override{Name: "o", Namespace: "ns", Budgets: []string{"a"}, RateLimits: []string{"b"},
		Namespaces: []string{"prod"}, Users: []string{"u"}, ExpiresAt: exp.Time, Reason: "r!!", RequestedBy: "me", ResetBreaker: true})
	if got.Name != want.Name || !got.ExpiresAt.Equal(want.ExpiresAt) || got.Budgets[0] != "a" || got.RateLimits[0] != "b" || !got.ResetBreaker || got.Users[0] != "u" {
		t.Fatalf("round trip: got %+v, want %+v", got, want)
	}
}

func TestGrantValidateReportsEverything(t *testing.T) {
	err := (&Grant{Namespace: "x"}).Validate()
	for _, w := range []string{"--budget NAME or --rate-limit NAME", "--for must be a positive duration", "--reason is required"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
}

func TestTargetsAndScopeNameTheNonEmptyLists(t *testing.T) {
	cases := []struct {
		name       string
		spec       Spec
		wantTarget string
		wantScope  string
	}{
		{name: "budgets only, everywhere", spec: Spec{Budgets: []string{"a", "b"}}, wantTarget: "budgets a,b", wantScope: "all"},
		{name: "both kinds of rule, narrowed to namespaces and users",
			spec:       Spec{Budgets: []string{"a"}, RateLimits: []string{"r"}, Namespaces: []string{"shop"}, Users: []string{"alice", "bob"}},
			wantTarget: "budgets a; rateLimits r", wantScope: "namespaces shop; users alice,bob"},
		{name: "rate limits only, narrowed to users", spec: Spec{RateLimits: []string{"r"}, Users: []string{"alice"}}, wantTarget: "rateLimits r", wantScope: "users alice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := &Override{Spec: tc.spec}
			if got := o.Targets(); got != tc.wantTarget {
				t.Errorf("Targets() = %q, want %q", got, tc.wantTarget)
			}
			if got := o.Scope(); got != tc.wantScope {
				t.Errorf("Scope() = %q, want %q", got, tc.wantScope)
			}
		})
	}
}
