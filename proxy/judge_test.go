package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"k8s.io/utils/clock"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// call sends one request through the proxy and returns its code and body.
func (e *env) call(t *testing.T, c *http.Client, method, path, contentType, body string, header ...string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.proxyURL+path, rd)
	if err != nil {
		t.Fatalf("failed to build the request: %v", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("failed to call the proxy: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type step struct {
	method, path, contentType, body string
	wantCode                        int
}

const budgetPolicyHead = `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  budgets:
`

// TestBudgetsAtTheProxyJudgeWhatTheAPIServerWillDo: each case is a budget and
// a sequence of requests; the codes are what the API server's own reading
// of the request (verb as admission sees it, DeleteOptions from the body
// when there is one) makes of the budget.
func TestBudgetsAtTheProxyJudgeWhatTheAPIServerWillDo(t *testing.T) {
	const pod = "/api/v1/namespaces/default/pods/p"
	const pods = "/api/v1/namespaces/default/pods"
	const cm = "/api/v1/namespaces/default/configmaps/c"
	for _, tc := range []struct {
		name   string
		budget string
		steps  []step
	}{
		{
			name:   "a patch is charged like an update",
			budget: `{name: cm-writes, match: {verbs: [update], resources: [configmaps]}, windows: [{window: 1h, limit: 2}]}`,
			steps: []step{
				{method: "PATCH", path: cm, contentType: "application/merge-patch+json", body: `{"data":{"a":"1"}}`, wantCode: 200},
				{method: "PUT", path: cm, contentType: "application/json", body: `{}`, wantCode: 200},
				{method: "PATCH", path: cm, contentType: "application/merge-patch+json", body: `{"data":{"a":"2"}}`, wantCode: 429},
			},
		},
		{
			name:   "dryRun=All in the query with a body {} is a real delete and is charged",
			budget: `{name: pod-deletes, match: {verbs: [delete], resources: [pods]}, windows: [{window: 1h, limit: 1}]}`,
			steps: []step{
				{method: "DELETE", path: pod + "?dryRun=All", contentType: "application/json", body: `{}`, wantCode: 200},
				{method: "DELETE", path: pod + "?dryRun=All", contentType: "application/json", body: `{}`, wantCode: 429},
			},
		},
		{
			name:   "dryRun only in the body is a dry run and is not charged",
			budget: `{name: pod-deletes, match: {verbs: [delete], resources: [pods]}, windows: [{window: 1h, limit: 1}]}`,
			steps: []step{
				{method: "DELETE", path: pod, contentType: "application/json", body: `{"kind":"DeleteOptions","apiVersion":"v1","dryRun":["All"]}`, wantCode: 200},
				{method: "DELETE", path: pod, contentType: "application/yaml", body: "dryRun: [All]\n", wantCode: 200},
				{method: "DELETE", path: pod, body: `{"dryRun":["All"],"propagationPolicy":"Foreground"}`, wantCode: 200},
				{method: "DELETE", path: pod, wantCode: 200},
				{method: "DELETE", path: pod, wantCode: 429},
			},
		},
		{
			name:   "dryRun in the query with no body is a dry run",
			budget: `{name: pod-deletes, match: {verbs: [delete], resources: [pods]}, windows: [{window: 1h, limit: 1}]}`,
			steps: []step{
				{method: "DELETE", path: pod + "?dryRun=All", wantCode: 200},
				{method: "DELETE", path: pod + "?dryRun=All", wantCode: 200},
				{method: "DELETE", path: pod + "?gracePeriodSeconds=0", wantCode: 200},
				{method: "DELETE", path: pod, wantCode: 429},
			},
		},
		{
			name:   "a body too large to read is judged as a real delete",
			budget: `{name: pod-deletes, match: {verbs: [delete], resources: [pods]}, windows: [{window: 1h, limit: 1}]}`,
			steps: []step{
				{method: "DELETE", path: pod, body: `{"dryRun":["All"],"x":"` + strings.Repeat("a", MaxDeleteOptionsBytes) + `"}`, wantCode: 200},
				{method: "DELETE", path: pod, wantCode: 429},
			},
		},
		{
			name:   "an undecodable body is judged as a real delete",
			budget: `{name: pod-deletes, match: {verbs: [delete], resources: [pods]}, windows: [{window: 1h, limit: 1}]}`,
			steps: []step{
				{method: "DELETE", path: pod, contentType: "application/json", body: `{"dryRun":`, wantCode: 200},
				{method: "DELETE", path: pod, wantCode: 429},
			},
		},
		{
			name:   "a budget on delete charges a deletecollection one token per request",
			budget: `{name: pod-deletes, match: {verbs: [delete], resources: [pods]}, windows: [{window: 1h, limit: 2}]}`,
			steps: []step{
				{method: "DELETE", path: pods + "?labelSelector=app%3Dx", wantCode: 200},
				{method: "DELETE", path: pods, contentType: "application/json", body: `{"dryRun":["All"]}`, wantCode: 200},
				{method: "DELETE", path: pods, wantCode: 200},
				{method: "DELETE", path: pods, wantCode: 429},
			},
		},
		{
			name:   "a budget naming only deletecollection still charges it",
			budget: `{name: collections, match: {verbs: [deletecollection], resources: [pods]}, windows: [{window: 1h, limit: 1}]}`,
			steps: []step{
				{method: "DELETE", path: pods, wantCode: 200},
				{method: "DELETE", path: pod, wantCode: 200},
				{method: "DELETE", path: pods, wantCode: 429},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := &bodyRecorder{}
			e := newEnv(t, envOptions{budgets: true, policy: budgetPolicyHead + "  - " + tc.budget + "\n",
				upstream: up})
			c := e.client(e.userCert(t, "alice"), true)
			var sent []string
			for i, s := range tc.steps {
				code, body := e.call(t, c, s.method, s.path, s.contentType, s.body)
				if code != s.wantCode {
					t.Fatalf("step %d (%s %s %.40q): code %d, want %d: %s", i, s.method, s.path, s.body, code, s.wantCode, body)
				}
				if code == 200 {
					sent = append(sent, s.body)
				}
			}
			up.check(t, sent)
		})
	}
}

// TestRateLimitsAndFlowsKeepTheRealVerb: only budgets see a patch as an
// update; a rate limit on patch still limits patches and not updates.
func TestRateLimitsAndFlowsKeepTheRealVerb(t *testing.T) {
	e := newEnv(t, envOptions{budgets: true, policy: `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  budgets:
  - {name: cm-writes, match: {verbs: [update], resources: [configmaps]}, windows: [{window: 1h, limit: 100}]}
  rateLimits:
  - {name: patches, match: {verbs: [patch]}, qps: 0.001, burst: 1}
`})
	c := e.client(e.userCert(t, "alice"), false)
	const cm = "/api/v1/namespaces/default/configmaps/c"
	for i, s := range []step{
		{method: "PATCH", path: cm, contentType: "application/merge-patch+json", body: `{}`, wantCode: 200},
		{method: "PUT", path: cm, contentType: "application/json", body: `{}`, wantCode: 200},
		{method: "PATCH", path: cm, contentType: "application/merge-patch+json", body: `{}`, wantCode: 429},
	} {
		code, body := e.call(t, c, s.method, s.path, s.contentType, s.body)
		if code != s.wantCode {
			t.Fatalf("step %d (%s): code %d, want %d: %s", i, s.method, code, s.wantCode, body)
		}
		if code == 429 && !strings.Contains(body, "patches") {
			t.Errorf("step %d: denial %s does not come from the patch rate limit", i, body)
		}
	}
}

// TestTheFiltersAfterTheLimitsSeeTheRealVerb: the priority levels (flow
// schemas) come after the limits and must still see a patch as a patch.
func TestTheFiltersAfterTheLimitsSeeTheRealVerb(t *testing.T) {
	c := mustPolicy(t, budgetPolicyHead+"  - {name: cm-writes, match: {verbs: [update], resources: [configmaps]}, windows: [{window: 1h, limit: 100}]}\n")
	eng, err := limiter.NewEngine(limiter.EngineConfig{Policy: c})
	if err != nil {
		t.Fatalf("failed to build the engine: %v", err)
	}
	for _, budgets := range []bool{false, true} {
		var seen string
		m := newMetrics()
		h := WithRequestState(clock.RealClock{}, WithInstrumentation(m, WithRequestAttributes(DefaultBodyReadTimeout, WithLimits(LimitsConfig{Engine: eng, BudgetsAtProxy: budgets, Metrics: m},
			http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = stateOf(r).attrs.Verb })))))
		r := httptest.NewRequest(http.MethodPatch, "/api/v1/namespaces/default/configmaps/c", strings.NewReader("{}"))
		h.ServeHTTP(httptest.NewRecorder(), r)
		if seen != "patch" {
			t.Errorf("budgetsAtProxy=%v: the next filter saw verb %q, want patch", budgets, seen)
		}
	}
}

const trippablePolicy = `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  budgets:
  - name: everything
    match: {verbs: [create, update, delete, deletecollection], resources: ["*"]}
    windows: [{window: 1h, limit: 1}]
    breaker: {recovery: Manual}
  rateLimits:
  - {name: flood, match: {userAgents: ["^flood/"]}, qps: 0.001, burst: 1}
  breakGlass: {namespace: ops-guard}
`

// TestExemptRequestsPassATrippedBreakerButNotRateLimits: with a cluster-wide
// Manual breaker open, the requests policy.Exemption exempts (the webhook's
// own list) still pass the proxy in both modes — break-glass Overrides,
// objects in the policy's breakGlass namespace, Leases, Events — while
// everything else is refused, and rate limits still apply to them.
func TestExemptRequestsPassATrippedBreakerButNotRateLimits(t *testing.T) {
	const overrides = "/apis/kubedefender.io/v1alpha1/namespaces/ops-guard/overrides"
	for _, budgets := range []bool{false, true} {
		name := "budgets charged by the webhook, early breaker reject at the proxy"
		if budgets {
			name = "budgets charged at the proxy"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOptions{budgets: budgets, policy: trippablePolicy})
			c := e.client(e.userCert(t, "admin"), false)
			// Given a tripped cluster-wide Manual breaker
			if budgets {
				e.call(t, c, "DELETE", "/api/v1/namespaces/default/pods/a", "", "")
				e.call(t, c, "DELETE", "/api/v1/namespaces/default/pods/b", "", "")
			} else {
				for _, n := range []string{"a", "b"} {
					e.engine.Decide(context.Background(), &limiter.Attributes{Attributes: policy.Attributes{
						Verb: "delete", Resource: "pods", Namespace: "default", Name: n, User: "admin"}, Checks: limiter.CheckBudgets})
				}
			}
			for _, s := range []step{
				// When exempt requests are sent, Then they pass
				{method: "DELETE", path: overrides + "/o", wantCode: 200},
				{method: "POST", path: overrides, contentType: "application/json", body: `{"kind":"Override"}`, wantCode: 200},
				{method: "DELETE", path: "/api/v1/namespaces/ops-guard/pods/kubedefender-0", wantCode: 200},
				{method: "PATCH", path: "/apis/apps/v1/namespaces/ops-guard/deployments/kubedefender", contentType: "application/merge-patch+json", body: `{}`, wantCode: 200},
				{method: "DELETE", path: "/apis/coordination.k8s.io/v1/namespaces/default/leases/l", wantCode: 200},
				{method: "DELETE", path: "/api/v1/namespaces/default/events/e", wantCode: 200},
				{method: "DELETE", path: "/apis/events.k8s.io/v1/namespaces/default/events/e", wantCode: 200},
				{method: "POST", path: "/apis/authentication.k8s.io/v1/selfsubjectreviews", contentType: "application/json", body: `{}`, wantCode: 200},
				// kube-system is excluded by default (as the webhook configuration leaves it out)
				{method: "DELETE", path: "/api/v1/namespaces/kube-system/pods/coredns-0", wantCode: 200},
				// and the rest is refused
				{method: "DELETE", path: "/api/v1/namespaces/default/pods/p", wantCode: 403},
				{method: "PATCH", path: "/api/v1/namespaces/default/configmaps/c", contentType: "application/merge-patch+json", body: `{}`, wantCode: 403},
				{method: "DELETE", path: "/api/v1/namespaces/ops-guard", wantCode: 403},
				{method: "DELETE", path: "/api/v1/namespaces/kubedefender-system/pods/p", wantCode: 403},
			} {
				if code, body := e.call(t, c, s.method, s.path, s.contentType, s.body); code != s.wantCode {
					t.Errorf("%s %s: code %d, want %d: %s", s.method, s.path, code, s.wantCode, body)
				}
			}
			// Rate limits still apply to exempt requests.
			for i, want := range []int{200, 429} {
				if code, body := e.call(t, c, "DELETE", overrides+"/o", "", "", "User-Agent", "flood/1"); code != want {
					t.Errorf("exempt request %d from a flooding agent: code %d, want %d: %s", i, code, want, body)
				}
			}
		})
	}
}

// TestPassthroughLimitsTheTokensUserNotTheCertificates: in passthrough mode
// the API server acts as the bearer token's user (the client certificate
// ends at the proxy), so that is who rate limits and flows see.
func TestPassthroughLimitsTheTokensUserNotTheCertificates(t *testing.T) {
	e := newEnv(t, envOptions{mode: AuthPassthrough, tokens: map[string]string{"tok-bob": "bob"}, policy: `
apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  rateLimits:
  - {name: per-user, match: {verbs: [list]}, per: [user], qps: 0.001, burst: 1}
`})
	for i, tc := range []struct {
		name     string
		cert     string
		token    string
		wantCode int
		wantUser string // X-Remote-User upstream; "" = none (credentials passed through)
	}{
		{name: "alice's certificate with bob's token is bob", cert: "alice", token: "tok-bob", wantCode: 200},
		{name: "carol's certificate with bob's token is bob again, and bob is over his limit", cert: "carol", token: "tok-bob", wantCode: 429},
		{name: "dave's certificate with an invalid token is anonymous, not dave", cert: "dave", token: "forged", wantCode: 200},
		{name: "erin's certificate with another invalid token is anonymous again, over its limit", cert: "erin", token: "forged-2", wantCode: 429},
		{name: "dave's certificate alone is dave", cert: "dave", wantCode: 200, wantUser: "dave"},
	} {
		c := e.client(e.userCert(t, tc.cert), false)
		var hdr []string
		if tc.token != "" {
			hdr = []string{"Authorization", "Bearer " + tc.token}
		}
		code, body := e.call(t, c, "GET", "/api/v1/namespaces/default/pods", "", "", hdr...)
		if code != tc.wantCode {
			t.Fatalf("step %d, %s: code %d, want %d: %s", i, tc.name, code, tc.wantCode, body)
		}
		if code == 200 {
			if got := e.upstreamSaw().Header.Get("X-Remote-User"); got != tc.wantUser {
				t.Errorf("step %d, %s: upstream X-Remote-User %q, want %q", i, tc.name, got, tc.wantUser)
			}
		}
	}
}

// TestExcludedNamespacesFollowThePolicy: spec.exemptions.excludeNamespaces
// replaces the default (kube-system) at the proxy, as in the webhook
// configuration, and [] excludes none.
func TestExcludedNamespacesFollowThePolicy(t *testing.T) {
	for _, tt := range []struct {
		name        string
		exemptions  string
		excluded    []string
		notExcluded []string
	}{
		{name: "unset excludes kube-system", excluded: []string{"kube-system"}, notExcluded: []string{"batch"}},
		{name: "a list replaces the default", exemptions: "  exemptions: {excludeNamespaces: [batch]}\n", excluded: []string{"batch"}, notExcluded: []string{"kube-system"}},
		{name: "an empty list excludes none", exemptions: "  exemptions: {excludeNamespaces: []}\n", notExcluded: []string{"kube-system", "batch"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envOptions{budgets: true, policy: trippablePolicy + tt.exemptions})
			c := e.client(e.userCert(t, "admin"), false)
			// Given a tripped cluster-wide Manual breaker
			e.call(t, c, "DELETE", "/api/v1/namespaces/default/pods/a", "", "")
			e.call(t, c, "DELETE", "/api/v1/namespaces/default/pods/b", "", "")
			for _, ns := range tt.excluded {
				if code, body := e.call(t, c, "DELETE", "/api/v1/namespaces/"+ns+"/pods/p", "", ""); code != 200 {
					t.Errorf("a delete in excluded namespace %s: code %d, want 200: %s", ns, code, body)
				}
				if code, body := e.call(t, c, "DELETE", "/api/v1/namespaces/"+ns, "", ""); code != 200 {
					t.Errorf("deleting excluded namespace %s itself: code %d, want 200: %s", ns, code, body)
				}
			}
			for _, ns := range tt.notExcluded {
				if code, body := e.call(t, c, "DELETE", "/api/v1/namespaces/"+ns+"/pods/p", "", ""); code != 403 {
					t.Errorf("a delete in namespace %s: code %d, want 403 from the open breaker: %s", ns, code, body)
				}
			}
		})
	}
}
