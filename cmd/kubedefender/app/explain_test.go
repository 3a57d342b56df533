package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/webhook"
)

const explainPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: t}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete, evict], resources: [pods, coordination.k8s.io/leases]}
    exclude: {users: [system:serviceaccount:kube-system:generic-garbage-collector]}
    per: [namespace, user]
    windows: [{window: 1m, limit: 20}, {window: 1h, limit: 100}]
    breaker: {recovery: Manual}
  - name: prod-only
    match: {verbs: [delete], resources: [pods], namespaces: [prod]}
    windows: [{window: 1m, limit: 5}]
  - name: deployment-writes
    match: {verbs: [create, update], resources: [apps/deployments]}
    windows: [{window: 1m, limit: 5}]
  rateLimits:
  - name: agents
    match: {verbs: [get, list], userAgents: ["^agent/"]}
    per: [userAgent]
    qps: 5
`

func explainFor(t *testing.T, args ...string) (code int, out, errOut string) {
	t.Helper()
	p := writeFile(t, "p.yaml", explainPolicy)
	return run(t, append([]string{"policy", "explain", "--policy", p}, args...)...)
}

func TestPolicyExplainSaysWhy(t *testing.T) {
	long := strings.Repeat("a", 300)
	cases := []struct {
		name     string
		args     []string
		wantCode int
		want     []string // on stdout, or stderr when wantCode != 0
	}{
		{name: "an unknown verb is refused", args: []string{"--verb", "remove", "--resource", "pods"}, wantCode: 1,
			want: []string{`--verb "remove" is not a verb: want one of get, list`}},
		{name: "deployments without a group suggests apps/deployments", args: []string{"--verb", "delete", "--resource", "deployments"}, wantCode: 1,
			want: []string{`--resource "deployments": the core group serves no resource "deployments": write apps/deployments`}},
		{name: "core/pods is refused with what to write", args: []string{"--verb", "delete", "--resource", "core/pods"}, wantCode: 1,
			want: []string{`"core" is not an API group`, "write pods"}},
		{name: "create on pods/eviction is an evict", args: []string{"--verb", "create", "--resource", "pods/eviction", "--namespace", "prod", "--user", "alice"},
			want: []string{"request: evict pods/eviction in namespace prod by alice", "✓ pod-deletes", "matched  key namespace=prod,user=alice",
				"prod-only                Enforce  no match: verb evict is not one of [delete]"}},
		{name: "each rule that does not match says which condition failed", args: []string{"--verb", "delete", "--resource", "pods", "--namespace", "dev"},
			want: []string{"prod-only                Enforce  no match: namespace dev is not one of [prod]", "deployment-writes        Enforce  no match: verb delete is not one of [create update]; resource pods is not one of [apps/deployments]"}},
		{name: "an excluded user is told what excluded it", args: []string{"--verb", "delete", "--resource", "pods", "--namespace", "dev", "--user", "system:serviceaccount:kube-system:generic-garbage-collector"},
			want: []string{"pod-deletes              Enforce  excluded: the rule's exclude matches (users [system:serviceaccount:kube-system:generic-garbage-collector])"}},
		{name: "each budget shows its windows, breaker and front", args: []string{"--verb", "delete", "--resource", "pods", "--namespace", "prod"},
			want: []string{"enforced by webhook (or the proxy with --budgets-at=proxy); windows 1m: 20, 1h: 100; breaker Manual", "enforced by proxy; qps 5, burst 5"}},
		{name: "a patch is judged as the update the webhook receives", args: []string{"--verb", "patch", "--resource", "apps/deployments", "--namespace", "prod"},
			want: []string{"note: the API server sends a patch to the webhook as an update", "✓ deployment-writes"}},
		{name: "a Lease delete is exempt, as the webhook treats it", args: []string{"--verb", "delete", "--resource", "coordination.k8s.io/leases", "--namespace", "prod"},
			want: []string{"exempt from every budget: leases (leader election) are never charged", "pod-deletes              Enforce  exempt: leases"}},
		{name: "a write to a subresource is not judged by the webhook", args: []string{"--verb", "update", "--resource", "apps/deployments/status", "--namespace", "prod"},
			want: []string{"no match: the webhook does not judge writes to subresources (deployments/status)"}},
		{name: "an update of a scale subresource is judged as an update of its resource", args: []string{"--verb", "patch", "--resource", "apps/deployments/scale", "--namespace", "prod"},
			want: []string{"note: the webhook judges an update of deployments/scale as an update of deployments", "✓ deployment-writes"}},
		{name: "the key caps the User-Agent at 256 bytes as the engine does", args: []string{"--verb", "list", "--resource", "pods", "--user-agent", "agent/" + long},
			want: []string{"key userAgent=" + ("agent/" + long)[:256] + "\n"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := explainFor(t, tc.args...)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.wantCode, out, errOut)
			}
			got := out
			if tc.wantCode != 0 {
				got = errOut
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("output lacks %q:\n%s", w, got)
				}
			}
		})
	}
}

// TestPolicyExplainAgreesWithTheWebhook sends each request to the real
// webhook handler on a fresh engine and checks that the budgets and keys it
// charged are exactly those explain says apply.
func TestPolicyExplainReadsTheShippedConfigMap(t *testing.T) {
	cm := filepath.Join("..", "..", "..", "deploy", "base", "policy-configmap.yaml")
	code, out, errOut := run(t, "policy", "explain", "--policy", cm, "--verb", "delete", "--resource", "pods", "--namespace", "prod")
	if code != 0 || !strings.Contains(out, "policy production") || !strings.Contains(out, "✓ pod-deletes") {
		t.Errorf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}

func TestPolicyExplainAgreesWithTheWebhook(t *testing.T) {
	c, err := policy.Parse("p.yaml", []byte(explainPolicy))
	if err != nil {
		t.Fatal(err)
	}
	type req struct {
		op, group, resource, sub, ns, user string
		verb, flagResource                 string // as given to explain
	}
	reqs := []req{
		{op: "DELETE", resource: "pods", ns: "prod", user: "alice", verb: "delete", flagResource: "pods"},
		{op: "DELETE", resource: "pods", ns: "dev", user: "bob", verb: "delete", flagResource: "pods"},
		{op: "CREATE", resource: "pods", sub: "eviction", ns: "prod", user: "alice", verb: "create", flagResource: "pods/eviction"},
		{op: "UPDATE", group: "apps", resource: "deployments", ns: "prod", user: "alice", verb: "patch", flagResource: "apps/deployments"},
		{op: "UPDATE", group: "apps", resource: "deployments", sub: "scale", ns: "prod", user: "alice", verb: "update", flagResource: "apps/deployments/scale"},
		{op: "UPDATE", group: "apps", resource: "deployments", sub: "status", ns: "prod", user: "alice", verb: "update", flagResource: "apps/deployments/status"},
		{op: "DELETE", group: "coordination.k8s.io", resource: "leases", ns: "prod", user: "alice", verb: "delete", flagResource: "coordination.k8s.io/leases"},
		{op: "DELETE", resource: "pods", ns: "kubedefender-system", user: "alice", verb: "delete", flagResource: "pods"},
		{op: "DELETE", resource: "pods", ns: "prod", user: "system:serviceaccount:kube-system:generic-garbage-collector", verb: "delete", flagResource: "pods"},
	}
	for _, r := range reqs {
		t.Run(fmt.Sprintf("%s %s/%s/%s in %s by %s", r.op, r.group, r.resource, r.sub, r.ns, r.user), func(t *testing.T) {
			o := &explainOptions{Verb: r.verb, Resource: r.flagResource, Namespace: r.ns, User: r.user, Name: "x"}
			a, err := o.attributes()
			if err != nil {
				t.Fatal(err)
			}
			ex, err := explain(context.Background(), c, a)
			if err != nil {
				t.Fatal(err)
			}
			var explained []string
			for _, b := range ex.Budgets {
				if b.Applies {
					explained = append(explained, b.Name+" "+b.Key)
				}
			}

			eng, err := limiter.NewEngine(limiter.EngineConfig{Policy: c})
			if err != nil {
				t.Fatal(err)
			}
			h, err := webhook.NewHandler(webhook.Config{Engine: eng})
			if err != nil {
				t.Fatal(err)
			}
			body := fmt.Sprintf(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u1","kind":{"group":%q,"version":"v1","kind":"X"},"resource":{"group":%q,"version":"v1","resource":%q},"subResource":%q,"name":"x","namespace":%q,"operation":%q,"userInfo":{"username":%q},"object":null,"oldObject":null}}`,
				r.group, r.group, r.resource, r.sub, r.ns, r.op, r.user)
			rec := httptest.NewRecorder()
			hr := httptest.NewRequest(http.MethodPost, webhook.Path, strings.NewReader(body))
			hr.Header.Set("Content-Type", "application/json")
			h.ServeHTTP(rec, hr)
			if rec.Code != http.StatusOK {
				t.Fatalf("webhook answered %d: %s", rec.Code, rec.Body.String())
			}
			var charged []string
			for _, b := range eng.Status(context.Background(), 20).Budgets {
				for _, k := range b.Keys {
					for _, w := range k.Windows {
						if w.Used > 0 {
							charged = append(charged, b.Name+" "+k.Key)
							break
						}
					}
				}
			}
			sort.Strings(explained)
			sort.Strings(charged)
			if strings.Join(explained, "; ") != strings.Join(charged, "; ") {
				t.Errorf("explain says %q apply, the webhook charged %q", explained, charged)
			}
		})
	}
}

func TestPolicyExplainJudgesAgainstALiveReplicaWithoutCharging(t *testing.T) {
	c, err := policy.Parse("p.yaml", []byte(explainPolicy))
	if err != nil {
		t.Fatal(err)
	}
	full := &limiter.Status{Policy: "t", PolicyHash: c.Hash, Budgets: []limiter.BudgetStatus{{
		Name: "pod-deletes", Mode: "Enforce", Breaker: "Manual", Keys: []limiter.KeyStatus{
			{Key: "namespace=prod,user=alice", Breaker: "Open", Windows: []limiter.WindowStatus{{Window: "1m", Used: 20, Limit: 20}, {Window: "1h", Used: 40, Limit: 100}}},
			{Key: "namespace=dev,user=bob", Breaker: "Closed", Windows: []limiter.WindowStatus{{Window: "1m", Used: 3, Limit: 20}, {Window: "1h", Used: 3, Limit: 100}}},
		}}},
		Overrides: []limiter.OverrideStatus{{Name: "fix-staging", Budgets: []string{"pod-deletes"}, Namespaces: []string{"staging"}, Active: true, ExpiresAt: time.Now().Add(time.Hour)}},
	}
	// the agents rate limit: as many keys as /status reports, the emptiest first
	agents := limiter.RateStatus{Name: "agents", Mode: "Enforce", QPS: 5, Burst: 5, Hottest: []limiter.RateKeyStatus{{Key: "userAgent=agent/1", Tokens: 0.2}}}
	for len(agents.Hottest) < statusKeys {
		agents.Hottest = append(agents.Hottest, limiter.RateKeyStatus{Key: fmt.Sprintf("userAgent=agent/busy-%d", len(agents.Hottest)), Tokens: 0.5})
	}
	full.RateLimits = []limiter.RateStatus{agents}
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests++
		if r.Method != http.MethodGet || r.URL.Path != "/status" {
			t.Errorf("explain sent %s %s, want only GET /status", r.Method, r.URL.Path)
		}
		_ = json.NewEncoder(w).Encode(&replicaStatus{Replica: "r1", Engine: full})
	}))
	defer srv.Close()
	p := writeFile(t, "p.yaml", explainPolicy)
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"an open breaker denies now", []string{"--namespace", "prod", "--user", "alice"},
			[]string{"live: breaker Open, windows 1m 20/20  1h 40/100", "now (policy hash " + c.Hash + "): denied now: budget pod-deletes key namespace=prod,user=alice: breaker Open"}},
		{"a key with room is allowed", []string{"--namespace", "dev", "--user", "bob"},
			[]string{"live: breaker Closed, windows 1m 3/20  1h 3/100", "allowed now"}},
		{"a key the replica never counted is allowed for certain", []string{"--namespace", "qa", "--user", "carol"},
			[]string{"live: no request counted for this key", "allowed now\n"}},
		{"an active override bypasses the budget", []string{"--namespace", "staging", "--user", "dave"},
			[]string{"live: bypassed by active override fix-staging"}},
		{"an empty bucket denies now", []string{"--verb", "list", "--user-agent", "agent/1"},
			[]string{"live: 0.2 tokens left", "denied now: rate limit agents key userAgent=agent/1: no token left"}},
		{"a key past the buckets reported is not certain", []string{"--verb", "list", "--user-agent", "agent/2"},
			[]string{"live: not among the 20 emptiest buckets the server reports", "allowed now, unless a key the server did not report is full (or out of tokens)"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"policy", "explain", "--policy", p, "--verb", "delete", "--resource", "pods", "--server", srv.URL}, tc.args...)
			code, out, errOut := run(t, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
	if requests != len(cases) {
		t.Errorf("the replica got %d requests, want one GET /status per explain", requests)
	}
}

// TestPolicyExplainSaysWhenAnAtRootBudgetChargesARoot: a namespace delete
// does not match a pods budget by its resource, but an AtRoot pods budget
// charges it by the pods it removes; explain must say so (and that only the
// webhook does it), not "no match" alone.
func TestPolicyExplainSaysWhenAnAtRootBudgetChargesARoot(t *testing.T) {
	c, err := policy.Parse("p.yaml", []byte(`apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: t}
spec:
  budgets:
  - {name: pods-down, match: {verbs: [delete, evict], resources: [pods]}, per: [namespace], cascades: AtRoot, windows: [{window: 1m, limit: 20}]}
  - {name: pods-each, match: {verbs: [delete, evict], resources: [pods]}, per: [namespace], windows: [{window: 1m, limit: 20}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name                  string
		a                     policy.Attributes
		wantCascade, wantNone bool
	}{
		{name: "a namespace delete is a root", a: policy.Attributes{Verb: "delete", Resource: "namespaces", Name: "prod", Namespace: "prod", User: "alice"}, wantCascade: true},
		{name: "a deployment delete is a root", a: policy.Attributes{Verb: "delete", APIGroup: "apps", Resource: "deployments", Name: "web", Namespace: "prod", User: "alice"}, wantCascade: true},
		{name: "a scale update is a root", a: policy.Attributes{Verb: "update", APIGroup: "apps", Resource: "deployments", Subresource: "scale", Name: "web", Namespace: "prod", User: "alice"}, wantCascade: true},
		{name: "a node delete is a root", a: policy.Attributes{Verb: "delete", Resource: "nodes", Name: "n1", User: "alice"}, wantCascade: true},
		{name: "a pod delete is no root", a: policy.Attributes{Verb: "delete", Resource: "pods", Name: "p", Namespace: "prod", User: "alice"}},
		{name: "a configmap delete is no root", a: policy.Attributes{Verb: "delete", Resource: "configmaps", Name: "c", Namespace: "prod", User: "alice"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ex, err := explain(context.Background(), c, tt.a)
			if err != nil {
				t.Fatal(err)
			}
			atRoot, each := ex.Budgets[0], ex.Budgets[1]
			if got := atRoot.Cascade != ""; got != tt.wantCascade {
				t.Fatalf("AtRoot budget: cascade note %q, want one: %v", atRoot.Cascade, tt.wantCascade)
			}
			if tt.wantCascade && atRoot.Front != "webhook" {
				t.Errorf("AtRoot budget on a root: front %q, want webhook (the proxy counts no removals)", atRoot.Front)
			}
			if each.Cascade != "" {
				t.Errorf("PerObject budget: cascade note %q, want none", each.Cascade)
			}
		})
	}
}
