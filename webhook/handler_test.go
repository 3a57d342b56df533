package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// testNow is the fake time every handler test runs at.
var testNow = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

const testPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: test}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete, evict], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: 2}]
    breaker: {recovery: Manual}
  - name: deployment-deletes
    match: {verbs: [delete], resources: [apps/deployments]}
    windows: [{window: 1m, limit: 1}]
    breaker: {recovery: Auto, cooldown: 5m}
  - name: configmap-deletes
    mode: Shadow
    match: {verbs: [delete], resources: [configmaps]}
    windows: [{window: 1m, limit: 1}]
  - name: everything
    match: {verbs: [delete], resources: ["coordination.k8s.io/leases", events, "kubedefender.io/overrides", secrets]}
    windows: [{window: 1m, limit: 1}]
    breaker: {recovery: Manual}
  - name: deployment-updates
    match: {verbs: [update], resources: [apps/deployments]}
    windows: [{window: 1m, limit: 1}]
    breaker: {recovery: Manual}
`

type testEnv struct {
	h     *Handler
	reg   *prometheus.Registry
	clock *clocktesting.FakeClock
}

func newTestEnv(t testing.TB, cfg Config) *testEnv {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatalf("failed to parse the test policy: %v", err)
	}
	env := &testEnv{reg: prometheus.NewRegistry(), clock: clocktesting.NewFakeClock(testNow)}
	if cfg.Engine == nil {
		cfg.Engine, err = limiter.NewEngine(limiter.EngineConfig{Policy: p, Clock: env.clock,
			Store: limiter.NewMemoryStore(limiter.MemoryConfig{Clock: env.clock})})
		if err != nil {
			t.Fatalf("%v", err)
		}
	}
	cfg.Registerer = env.reg
	if cfg.Clock == nil {
		cfg.Clock = env.clock
	}
	if env.h, err = NewHandler(cfg); err != nil {
		t.Fatalf("%v", err)
	}
	return env
}

// reviewJSON builds an AdmissionReview the way the API server sends one.
type reviewSpec struct {
	uid, op, group, resource, sub, ns, name, user, objUID string
	dryRun                                                bool
	deleting                                              bool   // oldObject has a deletionTimestamp
	object                                                string // the request's object; empty is null
}

// eviction is a review of pod name's eviction whose object is an Eviction of
// apiVersion with deleteOptions (JSON, "" for none).
func eviction(ns, name, apiVersion, deleteOptions string) reviewSpec {
	obj := fmt.Sprintf(`{"apiVersion":%q,"kind":"Eviction","metadata":{"name":%q,"namespace":%q,"creationTimestamp":null}`, apiVersion, name, ns)
	if deleteOptions != "" {
		obj += `,"deleteOptions":` + deleteOptions
	}
	return reviewSpec{op: "CREATE", resource: "pods", sub: "eviction", ns: ns, name: name, object: obj + "}"}
}

func (r reviewSpec) json() string {
	if r.uid == "" {
		r.uid = "705ab4f5-6393-11e8-b7cc-42010a800002"
	}
	if r.user == "" {
		r.user = "alice"
	}
	old := "null"
	if r.objUID != "" {
		dts := ""
		if r.deleting {
			dts = `,"deletionTimestamp":"2026-01-01T00:00:30Z","deletionGracePeriodSeconds":300`
		}
		old = fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":%q,"namespace":%q,"uid":%q%s},"spec":{"containers":[{"name":"app","image":"app:1"}]}}`, r.name, r.ns, r.objUID, dts)
	}
	obj := r.object
	if obj == "" {
		obj = "null"
	}
	return fmt.Sprintf(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":%q,"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":%q,"version":"v1","resource":%q},"subResource":%q,"requestKind":{"group":"","version":"v1","kind":"Pod"},"requestResource":{"group":%q,"version":"v1","resource":%q},"name":%q,"namespace":%q,"operation":%q,"userInfo":{"username":%q,"uid":"u-1","groups":["system:authenticated"]},"object":%s,"oldObject":%s,"dryRun":%t,"options":{"kind":"DeleteOptions","apiVersion":"meta.k8s.io/v1"}}}`,
		r.uid, r.group, r.resource, r.sub, r.group, r.resource, r.name, r.ns, r.op, r.user, obj, old, r.dryRun)
}

func post(h http.Handler, body, contentType string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, Path, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// postTimingOut posts body to env's handler whose engine is stuck: once stuck
// reports that the engine is stuck and a decision timer waits on the fake
// clock, it steps the clock by timeout, so the decision times out without
// real time passing.
func (env *testEnv) postTimingOut(t *testing.T, body string, timeout time.Duration, stuck func() bool) *httptest.ResponseRecorder {
	t.Helper()
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() { done <- post(env.h, body, "application/json") }()
	if err := wait.PollUntilContextTimeout(context.Background(), time.Millisecond, 10*time.Second, true,
		func(context.Context) (bool, error) { return stuck() && env.clock.HasWaiters(), nil }); err != nil {
		t.Fatal("the engine never got stuck waiting on the decision timeout")
	}
	env.clock.Step(timeout)
	return <-done
}

func decodeResponse(t *testing.T, rec *httptest.ResponseRecorder) *admissionv1.AdmissionResponse {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d, body %q", rec.Code, rec.Body.String())
	}
	var rv admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &rv); err != nil {
		t.Fatalf("failed to decode the response %q: %v", rec.Body.String(), err)
	}
	if rv.APIVersion != "admission.k8s.io/v1" || rv.Kind != "AdmissionReview" || rv.Response == nil {
		t.Fatalf("response %q is not an admission.k8s.io/v1 AdmissionReview with a response", rec.Body.String())
	}
	return rv.Response
}

func pods(op, ns, name string) reviewSpec {
	return reviewSpec{op: op, resource: "pods", ns: ns, name: name}
}

func TestHandlerJudgesReviews(t *testing.T) {
	type want struct {
		allowed  bool
		code     int32
		message  []string
		warnings int
		result   string
	}
	cases := []struct {
		name   string
		before []reviewSpec // sent first, answers ignored
		review reviewSpec
		want   want
	}{
		{name: "a delete within the budget is allowed",
			review: pods("DELETE", "a", "p1"),
			want:   want{allowed: true, result: ResultAllowed}},
		{name: "a delete over the budget is denied with the decision's code and actionable message",
			before: []reviewSpec{pods("DELETE", "a", "p1"), pods("DELETE", "a", "p2")},
			review: pods("DELETE", "a", "p3"),
			want: want{code: 403, result: ResultDenied, message: []string{
				`budget "pod-deletes" (key namespace=a) denied delete of pods "p3" in namespace "a"`, "window 1m is exhausted (2/2 used)",
				"kubedefender breakglass grant --budget pod-deletes --namespace a"}}},
		{name: "budgets per namespace keep namespaces apart",
			before: []reviewSpec{pods("DELETE", "a", "p1"), pods("DELETE", "a", "p2")},
			review: pods("DELETE", "b", "p1"),
			want:   want{allowed: true, result: ResultAllowed}},
		{name: "an Auto breaker denies with 429",
			before: []reviewSpec{{op: "DELETE", group: "apps", resource: "deployments", ns: "a", name: "d1"}},
			review: reviewSpec{op: "DELETE", group: "apps", resource: "deployments", ns: "a", name: "d2"},
			want:   want{code: 429, result: ResultDenied, message: []string{"recovery is Auto: retry after 5m0s"}}},
		{name: "an eviction is judged as evict against the pod budget",
			before: []reviewSpec{pods("DELETE", "a", "p1"), {op: "CREATE", resource: "pods", sub: "eviction", ns: "a", name: "p2"}},
			review: reviewSpec{op: "CREATE", resource: "pods", sub: "eviction", ns: "a", name: "p3"},
			want:   want{code: 403, result: ResultDenied, message: []string{"denied evict of pods \"p3\""}}},
		{name: "a dry run is judged but charges nothing",
			before: []reviewSpec{{op: "DELETE", resource: "pods", ns: "a", name: "p1", dryRun: true}, {op: "DELETE", resource: "pods", ns: "a", name: "p1", dryRun: true}},
			review: pods("DELETE", "a", "p1"),
			want:   want{allowed: true, result: ResultAllowed}},
		{name: "a repeated validation of one delete is charged once",
			before: []reviewSpec{{op: "DELETE", resource: "pods", ns: "a", name: "p1", objUID: "obj-1"}, {op: "DELETE", resource: "pods", ns: "a", name: "p1", objUID: "obj-1", uid: "second"}},
			review: reviewSpec{op: "DELETE", resource: "pods", ns: "a", name: "p2", objUID: "obj-2"},
			want:   want{allowed: true, result: ResultAllowed}},
		{name: "a shadow rule over its budget allows with a warning",
			before: []reviewSpec{{op: "DELETE", resource: "configmaps", ns: "a", name: "c1"}},
			review: reviewSpec{op: "DELETE", resource: "configmaps", ns: "a", name: "c2"},
			want:   want{allowed: true, warnings: 1, result: ResultShadow}},
		{name: "overrides are exempt",
			before: []reviewSpec{{op: "DELETE", group: "kubedefender.io", resource: "overrides", ns: "kubedefender-system", name: "o1"}},
			review: reviewSpec{op: "DELETE", group: "kubedefender.io", resource: "overrides", ns: "kubedefender-system", name: "o2"},
			want:   want{allowed: true, result: ResultExempt}},
		{name: "objects in kubedefender's own namespace are exempt",
			before: []reviewSpec{{op: "DELETE", resource: "secrets", ns: "kubedefender-system", name: "s1"}},
			review: reviewSpec{op: "DELETE", resource: "secrets", ns: "kubedefender-system", name: "s2"},
			want:   want{allowed: true, result: ResultExempt}},
		{name: "leases are exempt",
			before: []reviewSpec{{op: "DELETE", group: "coordination.k8s.io", resource: "leases", ns: "a", name: "l1"}},
			review: reviewSpec{op: "DELETE", group: "coordination.k8s.io", resource: "leases", ns: "a", name: "l2"},
			want:   want{allowed: true, result: ResultExempt}},
		{name: "events are exempt",
			before: []reviewSpec{{op: "DELETE", resource: "events", ns: "a", name: "e1"}},
			review: reviewSpec{op: "DELETE", resource: "events", ns: "a", name: "e2"},
			want:   want{allowed: true, result: ResultExempt}},
		{name: "other objects are not exempt",
			before: []reviewSpec{{op: "DELETE", resource: "secrets", ns: "a", name: "s1"}},
			review: reviewSpec{op: "DELETE", resource: "secrets", ns: "a", name: "s2"},
			want:   want{code: 403, result: ResultDenied}},
		{name: "an eviction whose deleteOptions ask for a dry run charges nothing (kubectl drain --dry-run=server)",
			before: []reviewSpec{eviction("a", "p1", "policy/v1", `{"dryRun":["All"]}`), eviction("a", "p2", "policy/v1", `{"dryRun":["All"]}`)},
			review: pods("DELETE", "a", "p3"),
			want:   want{allowed: true, result: ResultAllowed}},
		{name: "a policy/v1beta1 eviction whose deleteOptions ask for a dry run charges nothing",
			before: []reviewSpec{eviction("a", "p1", "policy/v1beta1", `{"dryRun":["All"]}`), eviction("a", "p2", "policy/v1beta1", `{"dryRun":["All"]}`)},
			review: pods("DELETE", "a", "p3"),
			want:   want{allowed: true, result: ResultAllowed}},
		{name: "an eviction whose deleteOptions ask for no dry run is charged",
			before: []reviewSpec{eviction("a", "p1", "policy/v1", `{"dryRun":[],"gracePeriodSeconds":30}`), eviction("a", "p2", "policy/v1", `{}`)},
			review: pods("DELETE", "a", "p3"),
			want:   want{code: 403, result: ResultDenied}},
		{name: "an object of another kind with a deleteOptions field is not read as an eviction",
			before: []reviewSpec{
				{op: "CREATE", resource: "pods", sub: "eviction", ns: "a", name: "p1", object: `{"apiVersion":"v1","kind":"Pod","deleteOptions":{"dryRun":["All"]}}`},
				{op: "CREATE", resource: "pods", sub: "eviction", ns: "a", name: "p2", object: `{"apiVersion":"policy/v1","kind":"Eviction","deleteOptions":"not options"}`}},
			review: pods("DELETE", "a", "p3"),
			want:   want{code: 403, result: ResultDenied}},
		{name: "a create whose object has a deleteOptions field of another type is judged, not refused",
			review: reviewSpec{op: "CREATE", resource: "configmaps", ns: "a", name: "c1", object: `{"apiVersion":"v1","kind":"ConfigMap","deleteOptions":42}`},
			want:   want{allowed: true, result: ResultAllowed}},
		{name: "a repeated eviction of a pod is admitted without a charge while no breaker is open",
			before: []reviewSpec{eviction("a", "p1", "policy/v1", "")},
			review: eviction("a", "p1", "policy/v1", ""),
			want:   want{allowed: true, result: ResultRepeat}},
		{name: "a repeated eviction of a pod is denied by an open Manual breaker (a StatefulSet pod recreated under the name)",
			before: []reviewSpec{eviction("a", "p1", "policy/v1", ""), eviction("a", "p2", "policy/v1", ""), eviction("a", "p3", "policy/v1", "")},
			review: eviction("a", "p1", "policy/v1", ""),
			want:   want{code: 403, result: ResultDenied, message: []string{`budget "pod-deletes"`}}},
		{name: "an eviction conditioned on another pod UID under the same name is charged again",
			before: []reviewSpec{
				eviction("a", "p1", "policy/v1", `{"preconditions":{"uid":"uid-1"}}`),
				eviction("a", "p1", "policy/v1", `{"preconditions":{"uid":"uid-2"}}`)},
			review: pods("DELETE", "a", "p3"),
			want:   want{code: 403, result: ResultDenied}},
		{name: "an eviction conditioned on the same pod UID is a repeat",
			before: []reviewSpec{eviction("a", "p1", "policy/v1", `{"preconditions":{"uid":"uid-1"}}`)},
			review: eviction("a", "p1", "policy/v1", `{"preconditions":{"uid":"uid-1"}}`),
			want:   want{allowed: true, result: ResultRepeat}},
		{name: "an update of a deployment's scale subresource is judged as a deployment update (kubectl scale)",
			before: []reviewSpec{{op: "UPDATE", group: "apps", resource: "deployments", sub: "scale", ns: "a", name: "d1"}},
			review: reviewSpec{op: "UPDATE", group: "apps", resource: "deployments", sub: "scale", ns: "a", name: "d2"},
			want:   want{code: 403, result: ResultDenied, message: []string{`budget "deployment-updates"`}}},
		{name: "a scale update and a plain update of deployments share one budget",
			before: []reviewSpec{{op: "UPDATE", group: "apps", resource: "deployments", ns: "a", name: "d1"}},
			review: reviewSpec{op: "UPDATE", group: "apps", resource: "deployments", sub: "scale", ns: "a", name: "d1"},
			want:   want{code: 403, result: ResultDenied}},
		{name: "a write to a status subresource is not judged",
			review: reviewSpec{op: "UPDATE", resource: "pods", sub: "status", ns: "a", name: "p1"},
			want:   want{allowed: true, result: ResultIgnored}},
		{name: "a CONNECT is not judged",
			review: reviewSpec{op: "CONNECT", resource: "pods", sub: "exec", ns: "a", name: "p1"},
			want:   want{allowed: true, result: ResultIgnored}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newTestEnv(t, Config{})
			for _, b := range tc.before {
				if rec := post(env.h, b.json(), "application/json"); rec.Code != http.StatusOK {
					t.Fatalf("setup review: status %d %s", rec.Code, rec.Body.String())
				}
			}
			tc.review.uid = "the-uid"
			resp := decodeResponse(t, post(env.h, tc.review.json(), "application/json"))
			if resp.UID != "the-uid" {
				t.Errorf("uid = %q, want the request's", resp.UID)
			}
			if resp.Allowed != tc.want.allowed {
				t.Errorf("allowed = %v, want %v (result %+v)", resp.Allowed, tc.want.allowed, resp.Result)
			}
			if !tc.want.allowed {
				if resp.Result == nil || resp.Result.Code != tc.want.code || resp.Result.Status != "Failure" {
					t.Fatalf("result = %+v, want a Failure with code %d", resp.Result, tc.want.code)
				}
				for _, m := range tc.want.message {
					if !strings.Contains(resp.Result.Message, m) {
						t.Errorf("message %q lacks %q", resp.Result.Message, m)
					}
				}
			}
			if len(resp.Warnings) != tc.want.warnings {
				t.Errorf("warnings = %q, want %d", resp.Warnings, tc.want.warnings)
			}
			op := tc.review.op
			if got := testutil.ToFloat64(env.h.metrics.requests.WithLabelValues(op, tc.want.result)); got < 1 {
				t.Errorf("requests_total{operation=%s,result=%s} = %v, want at least 1", op, tc.want.result, got)
			}
		})
	}
}

func TestHandlerRefusesBadRequests(t *testing.T) {
	good := pods("DELETE", "a", "p1").json()
	cases := []struct {
		name        string
		method      string
		body        string
		contentType string
		wantCode    int
		wantBody    string
	}{
		{name: "malformed JSON is a 400 that says where", body: `{"kind":"AdmissionReview",}`, wantCode: 400,
			wantBody: "failed to decode AdmissionReview: invalid JSON at byte 27: invalid character '}'"},
		{name: "truncated JSON is a 400 that says so", body: good[:len(good)/2], wantCode: 400,
			wantBody: "failed to decode AdmissionReview: the JSON is truncated"},
		{name: "an empty body is a 400", body: "", wantCode: 400, wantBody: "the body is empty"},
		{name: "a v1beta1 review is a 400 naming the version", body: strings.Replace(good, "admission.k8s.io/v1", "admission.k8s.io/v1beta1", 1), wantCode: 400,
			wantBody: `apiVersion "admission.k8s.io/v1beta1" is not supported`},
		{name: "a review without a request is a 400", body: `{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}`, wantCode: 400,
			wantBody: "request is missing"},
		{name: "a request without a uid is a 400", body: strings.Replace(good, `"uid":"705ab4f5-6393-11e8-b7cc-42010a800002"`, `"uid":""`, 1), wantCode: 400,
			wantBody: "request.uid is missing"},
		{name: "a field of the wrong type is a 400 naming it", body: strings.Replace(good, `"dryRun":false`, `"dryRun":"no"`, 1), wantCode: 400,
			wantBody: "field request.dryRun: cannot use a JSON string as bool"},
		{name: "a body that is not JSON is a 415", body: good, contentType: "application/yaml", wantCode: 415,
			wantBody: `Content-Type "application/yaml", want application/json`},
		{name: "a body without a content type is a 415", body: good, contentType: "-", wantCode: 415},
		{name: "a body over the cap is a 413", body: good + strings.Repeat(" ", 4096), wantCode: 413,
			wantBody: "exceeds the cap of 4096 bytes"},
		{name: "a GET is a 405", method: http.MethodGet, body: "", wantCode: 405},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newTestEnv(t, Config{MaxBodyBytes: 4096})
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			req := httptest.NewRequest(method, Path, strings.NewReader(tc.body))
			switch tc.contentType {
			case "":
				req.Header.Set("Content-Type", "application/json; charset=utf-8")
			case "-":
			default:
				req.Header.Set("Content-Type", tc.contentType)
			}
			rec := httptest.NewRecorder()
			env.h.ServeHTTP(rec, req)
			if rec.Code != tc.wantCode || !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Errorf("got %d %q, want %d containing %q", rec.Code, rec.Body.String(), tc.wantCode, tc.wantBody)
			}
			if tc.wantCode != 405 {
				if got := testutil.ToFloat64(env.h.metrics.requests.WithLabelValues("", ResultBadRequest)); got != 1 {
					t.Errorf("requests_total{result=bad_request} = %v, want 1", got)
				}
			}
		})
	}
}

// engineFunc is an Engine whose Decide runs a function: fault injection only.
type engineFunc struct {
	decide func(ctx context.Context) limiter.Decision
	policy *policy.Compiled
}

func (e engineFunc) Decide(ctx context.Context, _ *limiter.Attributes) limiter.Decision {
	return e.decide(ctx)
}
func (e engineFunc) Policy() *policy.Compiled { return e.policy }

func TestHandlerSurvivesAFaultyEngine(t *testing.T) {
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 100 * time.Millisecond
	cases := []struct {
		name        string
		decide      func(ctx context.Context) limiter.Decision
		stuck       bool // the engine never answers: the test times the decision out
		wantAllowed bool
		wantCode    int32
		wantText    string
		wantResult  string
	}{
		{name: "a panicking engine yields a 500 denial that carries the request's uid",
			decide:   func(context.Context) limiter.Decision { panic("boom") },
			wantCode: 500, wantText: "internal error while judging this request (logged with uid the-uid)", wantResult: ResultError},
		{name: "an engine that ignores its deadline is cut off and the request admitted with a warning",
			stuck:       true,
			wantAllowed: true, wantText: "could not judge this request within 100ms", wantResult: ResultTimeout},
		{name: "an engine that honours its deadline answers within it",
			decide: func(ctx context.Context) limiter.Decision {
				<-ctx.Done()
				return limiter.Decision{Code: 503, Reason: "ServiceUnavailable", Message: "store down"}
			},
			wantCode: 503, wantText: "store down", wantResult: ResultDenied},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			entered, release := make(chan struct{}), make(chan struct{})
			defer close(release)
			decide := tc.decide
			if tc.stuck {
				decide = func(context.Context) limiter.Decision {
					close(entered)
					<-release
					return limiter.Decision{Allowed: true}
				}
			}
			env := newTestEnv(t, Config{Engine: engineFunc{decide: decide, policy: p}, DecisionTimeout: timeout})
			r := pods("DELETE", "a", "p1")
			r.uid = "the-uid"
			var rec *httptest.ResponseRecorder
			if tc.stuck {
				rec = env.postTimingOut(t, r.json(), timeout, func() bool { return isClosed(entered) })
			} else {
				rec = post(env.h, r.json(), "application/json")
			}
			resp := decodeResponse(t, rec)
			if resp.UID != "the-uid" || resp.Allowed != tc.wantAllowed {
				t.Errorf("uid %q allowed %v, want the-uid and %v", resp.UID, resp.Allowed, tc.wantAllowed)
			}
			text := strings.Join(resp.Warnings, " ")
			if resp.Result != nil {
				text += resp.Result.Message
				if resp.Result.Code != tc.wantCode {
					t.Errorf("code %d, want %d", resp.Result.Code, tc.wantCode)
				}
			}
			if !strings.Contains(text, tc.wantText) {
				t.Errorf("answer %q lacks %q", text, tc.wantText)
			}
			if got := testutil.ToFloat64(env.h.metrics.requests.WithLabelValues("DELETE", tc.wantResult)); got != 1 {
				t.Errorf("requests_total{result=%s} = %v, want 1", tc.wantResult, got)
			}
		})
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestHandlerServesHealthz(t *testing.T) {
	env := newTestEnv(t, Config{})
	rec := httptest.NewRecorder()
	env.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != 200 || rec.Body.String() != "ok" {
		t.Errorf("GET /healthz = %d %q", rec.Code, rec.Body.String())
	}
}

func TestNewHandlerRequiresAnEngine(t *testing.T) {
	if _, err := NewHandler(Config{}); err == nil || !strings.Contains(err.Error(), "no engine") {
		t.Errorf("err = %v, want no engine", err)
	}
}

func TestRetryAfterReachesTheStatusDetails(t *testing.T) {
	env := newTestEnv(t, Config{})
	d1 := reviewSpec{op: "DELETE", group: "apps", resource: "deployments", ns: "a", name: "d1"}
	d2 := d1
	d2.name = "d2"
	post(env.h, d1.json(), "application/json")
	resp := decodeResponse(t, post(env.h, d2.json(), "application/json"))
	if resp.Result == nil || resp.Result.Details == nil || resp.Result.Details.RetryAfterSeconds != 300 {
		t.Fatalf("result %+v, want details.retryAfterSeconds 300", resp.Result)
	}
	if !bytes.Contains([]byte(fmt.Sprint(resp.AuditAnnotations)), []byte("rule:deployment-deletes")) {
		t.Errorf("audit annotations %v lack the rule", resp.AuditAnnotations)
	}
}

// TestRepeatsReachingAnotherReplicaAreNotCharged: the API server validates one
// DELETE up to three times; when the repeats reach another replica sharing
// the store, the store recognises the object and charges it once.
func TestRepeatsReachingAnotherReplicaAreNotCharged(t *testing.T) {
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktesting.NewFakeClock(testNow)
	shared := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk})
	replicas := make([]*Handler, 2)
	for i := range replicas {
		eng, err := limiter.NewEngine(limiter.EngineConfig{Policy: p, Clock: clk, Store: shared})
		if err != nil {
			t.Fatal(err)
		}
		env := newTestEnv(t, Config{Engine: eng})
		replicas[i] = env.h
	}
	// Given pod-deletes allows 2 per minute in a namespace
	for i, obj := range []string{"uid-a", "uid-a", "uid-a", "uid-b", "uid-b"} {
		// When each validation of a delete reaches the other replica
		r := reviewSpec{uid: fmt.Sprintf("req-%d", i), op: "DELETE", resource: "pods", ns: "prod", name: obj, objUID: obj}
		resp := decodeResponse(t, post(replicas[i%2], r.json(), "application/json"))
		// Then every validation of the two objects is admitted: each object is charged once
		if !resp.Allowed {
			t.Fatalf("validation %d of %s denied: %s", i, obj, resp.Result.Message)
		}
	}
	// And a third object finds the budget spent
	r := reviewSpec{uid: "req-9", op: "DELETE", resource: "pods", ns: "prod", name: "c", objUID: "uid-c"}
	if resp := decodeResponse(t, post(replicas[0], r.json(), "application/json")); resp.Allowed {
		t.Fatal("a third object was admitted: the repeats were charged")
	}
}

func TestDeletesAndEvictionsAreChargedOnce(t *testing.T) {
	env := newTestEnv(t, Config{})
	send := func(r reviewSpec) *admissionv1.AdmissionResponse {
		t.Helper()
		return decodeResponse(t, post(env.h, r.json(), "application/json"))
	}
	// Given pod-deletes allows 2 per minute in namespace prod
	// When a PodDisruptionBudget makes kubectl drain retry one pod's eviction five times
	for i := 0; i < 5; i++ {
		r := reviewSpec{uid: fmt.Sprintf("evict-%d", i), op: "CREATE", resource: "pods", sub: "eviction", ns: "prod", name: "web-0"}
		if resp := send(r); !resp.Allowed {
			t.Fatalf("eviction retry %d denied: %s", i, resp.Result.Message)
		}
	}
	// Then it took one token: one more pod can go
	if resp := send(reviewSpec{uid: "d-1", op: "DELETE", resource: "pods", ns: "prod", name: "web-1", objUID: "uid-1"}); !resp.Allowed {
		t.Fatalf("the second token was taken by eviction retries: %s", resp.Result.Message)
	}
	if resp := send(reviewSpec{uid: "d-2", op: "DELETE", resource: "pods", ns: "prod", name: "web-2", objUID: "uid-2"}); resp.Allowed {
		t.Fatal("a third pod was admitted past the budget")
	}
	// And the kubelet's final DELETE of a pod whose graceful deletion began earlier is admitted free,
	// however long after and with the budget spent
	final := reviewSpec{uid: "d-3", op: "DELETE", resource: "pods", ns: "prod", name: "web-9", objUID: "uid-9", user: "system:node:n1", deleting: true}
	if resp := send(final); !resp.Allowed {
		t.Fatalf("the final delete of a pod already being deleted was judged: %s", resp.Result.Message)
	}
}

// TestOnlyARealChargeMakesARepeatFree: the memo and the store's charge-once
// key let a repeat of a charged delete through free, so they must record
// nothing but the charge the engine made for that very object. Each case ends
// with the victim pod's real delete in namespace "a" after the budget there
// (2 per minute, Manual breaker) is spent: it must be denied.
func TestOnlyARealChargeMakesARepeatFree(t *testing.T) {
	type step struct {
		replica int
		review  reviewSpec
	}
	victim := reviewSpec{op: "DELETE", resource: "pods", ns: "a", name: "victim", objUID: "victim-uid"}
	spend := []step{
		{0, reviewSpec{op: "DELETE", resource: "pods", ns: "a", name: "p1", objUID: "uid-1"}},
		{0, reviewSpec{op: "DELETE", resource: "pods", ns: "a", name: "p2", objUID: "uid-2"}},
	}
	cases := []struct {
		name    string
		forged  []step
		replica int // where the victim's delete arrives
	}{
		{name: "a review carrying the pod's uid under another name and namespace launders nothing on this replica",
			forged: []step{{0, reviewSpec{op: "DELETE", resource: "pods", ns: "b", name: "decoy", objUID: "victim-uid"}}}},
		{name: "a review carrying the pod's uid under another name launders nothing on a replica sharing the store",
			forged:  []step{{0, reviewSpec{op: "DELETE", resource: "pods", ns: "b", name: "decoy", objUID: "victim-uid"}}},
			replica: 1},
		{name: "a review carrying the pod's uid on a resource no budget matches records nothing",
			forged: []step{{0, reviewSpec{op: "DELETE", resource: "services", ns: "a", name: "victim", objUID: "victim-uid"}}}},
		{name: "a review carrying the pod's uid on another budgeted resource launders nothing",
			forged: []step{{0, reviewSpec{op: "DELETE", resource: "secrets", ns: "a", name: "victim", objUID: "victim-uid"}}}},
		{name: "a dry run of the pod's delete records nothing",
			forged: []step{{0, reviewSpec{op: "DELETE", resource: "pods", ns: "a", name: "victim", objUID: "victim-uid", dryRun: true}}}},
	}
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(testNow)
			shared := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk})
			replicas := make([]*Handler, 2)
			for i := range replicas {
				eng, err := limiter.NewEngine(limiter.EngineConfig{Policy: p, Clock: clk, Store: shared})
				if err != nil {
					t.Fatal(err)
				}
				replicas[i] = newTestEnv(t, Config{Engine: eng}).h
			}
			// Given a forged review, then the budget of namespace a spent by real deletes
			for i, s := range append(append([]step{}, tc.forged...), spend...) {
				s.review.uid = fmt.Sprintf("req-%d", i)
				decodeResponse(t, post(replicas[s.replica], s.review.json(), "application/json"))
			}
			// When the victim pod's real delete arrives
			v := victim
			v.uid = "real"
			resp := decodeResponse(t, post(replicas[tc.replica], v.json(), "application/json"))
			// Then it is judged like any other delete: denied, not waved through as a repeat
			if resp.Allowed {
				t.Fatal("the victim's delete was admitted past a spent budget: the forged review marked it as charged")
			}
		})
	}
}

// TestATimedOutDecisionRecordsNoCharge: a decision that times out admits its
// request unjudged, and the next validation of the same object is judged
// again rather than waved through as a repeat.
func TestATimedOutDecisionRecordsNoCharge(t *testing.T) {
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var calls atomic.Int32
	eng := engineFunc{policy: p, decide: func(context.Context) limiter.Decision {
		if calls.Add(1) == 1 {
			<-release // the first decision hangs past the timeout
			return limiter.Decision{Allowed: true}
		}
		return limiter.Decision{Code: 403, Reason: "Forbidden", Message: "breaker open"}
	}}
	env := newTestEnv(t, Config{Engine: eng, DecisionTimeout: 50 * time.Millisecond})
	r := reviewSpec{uid: "first", op: "DELETE", resource: "pods", ns: "a", name: "p1", objUID: "uid-1"}
	// Given a delete whose decision timed out and was admitted unjudged
	rec := env.postTimingOut(t, r.json(), 50*time.Millisecond, func() bool { return calls.Load() == 1 })
	if resp := decodeResponse(t, rec); !resp.Allowed || len(resp.Warnings) == 0 {
		t.Fatalf("the timed-out delete: allowed %v warnings %q, want admitted with a warning", resp.Allowed, resp.Warnings)
	}
	// When the same object's delete is validated again
	r.uid = "second"
	resp := decodeResponse(t, post(env.h, r.json(), "application/json"))
	// Then the engine judges it
	if resp.Allowed || calls.Load() != 2 {
		t.Fatalf("allowed %v after %d engine calls, want the engine's denial on its second call", resp.Allowed, calls.Load())
	}
}

// repeatEngine answers an eviction with a charge-once key as a repeat, and
// a breakers-only check with breakers.
type repeatEngine struct {
	policy   *policy.Compiled
	breakers func(ctx context.Context) limiter.Decision
	mu       sync.Mutex
	calls    []limiter.Attributes
}

func (e *repeatEngine) Decide(ctx context.Context, a *limiter.Attributes) limiter.Decision {
	e.mu.Lock()
	e.calls = append(e.calls, *a)
	e.mu.Unlock()
	if a.ChargeOnce != "" {
		return limiter.Decision{Allowed: true, Repeat: true}
	}
	return e.breakers(ctx)
}
func (e *repeatEngine) Policy() *policy.Compiled { return e.policy }

func TestARepeatedEvictionMeetsTheBreakers(t *testing.T) {
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	cases := []struct {
		name        string
		breakers    func(ctx context.Context) limiter.Decision
		stuck       bool // the breaker check never answers: the test times it out
		wantAllowed bool
		wantResult  string
		wantText    string
	}{
		{name: "a repeat is admitted uncharged when no breaker is open",
			breakers:    func(context.Context) limiter.Decision { return limiter.Decision{Allowed: true} },
			wantAllowed: true, wantResult: ResultRepeat},
		{name: "a repeat is denied by an open breaker with the breaker's answer",
			breakers: func(context.Context) limiter.Decision {
				return limiter.Decision{Code: 403, Reason: "Forbidden", Message: "the breaker is Open", Rule: "pod-deletes"}
			},
			wantResult: ResultDenied, wantText: "the breaker is Open"},
		{name: "a breaker check that does not answer in time admits the repeat with the timeout warning",
			breakers: func(context.Context) limiter.Decision {
				<-release
				return limiter.Decision{Allowed: true}
			},
			stuck:       true,
			wantAllowed: true, wantResult: ResultTimeout, wantText: "could not judge this request within 100ms"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eng := &repeatEngine{policy: p, breakers: tc.breakers}
			env := newTestEnv(t, Config{Engine: eng, DecisionTimeout: 100 * time.Millisecond})
			r := eviction("a", "p1", "policy/v1", "")
			r.uid = "the-uid"
			var rec *httptest.ResponseRecorder
			if tc.stuck {
				rec = env.postTimingOut(t, r.json(), 100*time.Millisecond, func() bool {
					eng.mu.Lock()
					defer eng.mu.Unlock()
					return len(eng.calls) == 2
				})
			} else {
				rec = post(env.h, r.json(), "application/json")
			}
			resp := decodeResponse(t, rec)
			if resp.Allowed != tc.wantAllowed {
				t.Errorf("allowed = %v, want %v (%+v)", resp.Allowed, tc.wantAllowed, resp.Result)
			}
			text := strings.Join(resp.Warnings, " ")
			if resp.Result != nil {
				text += resp.Result.Message
			}
			if !strings.Contains(text, tc.wantText) {
				t.Errorf("answer %q lacks %q", text, tc.wantText)
			}
			if got := testutil.ToFloat64(env.h.metrics.requests.WithLabelValues("CREATE", tc.wantResult)); got != 1 {
				t.Errorf("requests_total{result=%s} = %v, want 1", tc.wantResult, got)
			}
			eng.mu.Lock()
			calls := slices.Clone(eng.calls)
			eng.mu.Unlock()
			if len(calls) != 2 {
				t.Fatalf("the engine was asked %d times, want the charge then the breakers", len(calls))
			}
			if c := calls[1]; c.Checks != limiter.CheckBreakers || c.ChargeOnce != "" || c.Verb != "evict" || c.Name != "p1" {
				t.Errorf("the second question was %+v, want the same eviction with breakers only and no charge-once key", c)
			}
		})
	}
}
