package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func loadPolicy(t testing.TB, path string) *policy.Compiled {
	t.Helper()
	c, err := policy.Load(path)
	if err != nil {
		t.Fatalf("failed to load %s: %v", path, err)
	}
	return c
}

func parsePolicy(t testing.TB, yaml string) *policy.Compiled {
	t.Helper()
	c, err := policy.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("failed to parse the policy: %v", err)
	}
	return c
}

func run(t testing.TB, pol *policy.Compiled, files ...string) *Report {
	t.Helper()
	rep, err := Run(context.Background(), Config{Policy: pol, Files: files})
	if err != nil {
		t.Fatalf("failed to replay: %v", err)
	}
	return rep
}

// canonical is a report's JSON without the file:line sources, which differ
// between inputs holding the same events.
func canonical(t testing.TB, r *Report) string {
	t.Helper()
	r.Problems, r.Skipped = nil, 0
	for _, rr := range r.Rules {
		for _, d := range []*Denial{rr.FirstDenied, rr.LastDenied} {
			if d != nil {
				d.Request.Source = ""
			}
		}
		for i := range rr.BreakerTrips {
			rr.BreakerTrips[i].Request.Source = ""
		}
	}
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// The fixtures under testdata were recorded from a real kube-apiserver by
// e2e/replay_test.go (KUBEDEFENDER_REPLAY_FIXTURE): six pod deletes by
// kubectl in replay-e2e (the last three denied by a Manual breaker), a
// deletecollection of two pods in replay-bulk with its response body, and
// ten lists by replay-agent/1.0 through the proxy, with the API server's
// own requests around them.
func TestRecordedLogs(t *testing.T) {
	pol := loadPolicy(t, "testdata/policy.yaml")
	golden := filepath.Join("testdata", "recorded.golden.json")
	got := canonical(t, run(t, pol, "testdata/recorded.log"))
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("failed to read the golden file (go test -update writes it): %v", err)
	}
	if got != string(want) {
		t.Fatalf("report differs from %s:\n%s", golden, got)
	}
	tests := []struct {
		name  string
		files []string
	}{
		{name: "a log rotated into a gzip file and the current file gives the same report", files: []string{"testdata/rotated/audit.log", "testdata/rotated/audit-2026-11-30T03-37-29.000.log.gz"}},
		{name: "stages written out of order give the same report", files: []string{"testdata/out-of-order.log"}},
		{name: "webhook-backend EventList batches give the same report", files: []string{"testdata/eventlist.log"}},
		{name: "malformed lines are skipped and the rest gives the same report", files: []string{"testdata/malformed.log"}},
		{name: "stdin gives the same report", files: []string{"-"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stdin, err := os.Open("testdata/recorded.log")
			if err != nil {
				t.Fatal(err)
			}
			defer stdin.Close()
			rep, err := Run(context.Background(), Config{Policy: pol, Files: tc.files, Stdin: stdin})
			if err != nil {
				t.Fatalf("failed to replay: %v", err)
			}
			if got := canonical(t, rep); got != string(want) {
				t.Errorf("report differs from %s:\n%s", golden, got)
			}
		})
	}
}

func TestRecordedLogMatchesWhatTheLiveWebhookAndProxyDid(t *testing.T) {
	rep := run(t, loadPolicy(t, "testdata/policy.yaml"), "testdata/recorded.log")
	del, lst := rep.Rules[0], rep.Rules[1]
	if del.Denied != 3 || del.FirstDenied.Request.Name != "victim-3" || del.FirstDenied.Request.Code != 403 {
		t.Errorf("pod-deletes: denied %d, first %+v; the live webhook denied victim-3, -4, -5 (403)", del.Denied, del.FirstDenied)
	}
	if len(del.BreakerTrips) != 1 || del.BreakerTrips[0].Request.Name != "victim-3" {
		t.Errorf("pod-deletes: trips %+v, want one by victim-3", del.BreakerTrips)
	}
	if del.Matched != 8 || rep.DeleteCollections != (DeleteCollections{WithBody: 1, Items: 2}) {
		t.Errorf("pod-deletes matched %d, deletecollections %+v; want 6 deletes and 2 items of one deletecollection", del.Matched, rep.DeleteCollections)
	}
	if lst.Matched != 10 || lst.Denied != 6 {
		t.Errorf("agent-lists: matched %d, denied %d; want 10 and the 6 the live proxy warned of", lst.Matched, lst.Denied)
	}
	if p := del.Peaks[0]; p.Used != 6 || p.Limit != 3 || p.Key != "namespace=replay-e2e" {
		t.Errorf("pod-deletes peak %+v, want 6 of 3 in namespace=replay-e2e", p)
	}
}

func TestMalformedLinesAreReportedWithFileAndLine(t *testing.T) {
	rep := run(t, loadPolicy(t, "testdata/policy.yaml"), "testdata/malformed.log")
	var got []string
	for _, p := range rep.Problems {
		got = append(got, fmt.Sprintf("%s:%d", p.File, p.Line))
	}
	want := []string{"testdata/malformed.log:4", "testdata/malformed.log:11", "testdata/malformed.log:21", "testdata/malformed.log:32"}
	if strings.Join(got, " ") != strings.Join(want, " ") || rep.Skipped != 4 {
		t.Errorf("problems %v (skipped %d), want %v", rep.Problems, rep.Skipped, want)
	}
}

// ev is one synthetic audit event.
type ev struct {
	id, stage, verb, ns, name, resource, group, sub, user, ua, uri string
	groups                                                         []string
	at                                                             time.Duration // after t0
	code                                                           int
	msg                                                            string
	forbid                                                         bool
	response                                                       string
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func (e ev) line() string {
	m := map[string]any{
		"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
		"auditID": e.id, "stage": e.stage, "verb": e.verb, "requestURI": e.uri,
		"user":                     map[string]any{"username": e.user, "groups": e.groups},
		"userAgent":                e.ua,
		"requestReceivedTimestamp": t0.Add(e.at).Format(time.RFC3339Nano),
		"stageTimestamp":           t0.Add(e.at + time.Millisecond).Format(time.RFC3339Nano),
	}
	if e.stage == "" {
		m["stage"] = stageResponseComplete
	}
	if e.user == "" {
		m["user"] = map[string]any{"username": "alice"}
	}
	if e.resource != "" {
		m["objectRef"] = map[string]any{"resource": e.resource, "namespace": e.ns, "name": e.name, "apiGroup": e.group, "subresource": e.sub}
	}
	if e.code != 0 {
		m["responseStatus"] = map[string]any{"code": e.code, "message": e.msg}
	}
	if e.forbid {
		m["annotations"] = map[string]any{"authorization.k8s.io/decision": "forbid"}
	}
	if e.response != "" {
		m["responseObject"] = json.RawMessage(e.response)
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func writeLog(t testing.TB, evs []ev) string {
	t.Helper()
	var b strings.Builder
	for i, e := range evs {
		if e.id == "" {
			e.id = fmt.Sprintf("id-%d", i)
		}
		b.WriteString(e.line() + "\n")
	}
	p := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const oneBudget = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: t}
spec:
  budgets:
  - name: b
    match: {verbs: [%s], resources: ["*"]}
    windows: [{window: 1m, limit: 1}]
`

func TestBudgetsAreJudgedAsTheWebhookWould(t *testing.T) {
	del := func(at time.Duration, name string) ev {
		return ev{verb: "delete", resource: "pods", ns: "a", name: name, at: at, code: 200}
	}
	tests := []struct {
		name        string
		verbs       string
		evs         []ev
		wantMatched int64
		wantDenied  int64
	}{
		{name: "requests refused before admission (401, 403 by RBAC, 404) are not judged", verbs: "delete",
			evs: []ev{
				{verb: "delete", resource: "pods", ns: "a", name: "x", code: 401},
				{verb: "delete", resource: "pods", ns: "a", name: "y", code: 403, forbid: true, msg: `pods "y" is forbidden`},
				{verb: "delete", resource: "pods", ns: "a", name: "z", code: 404},
				{verb: "delete", resource: "pods", ns: "a", name: "w", code: 429, msg: "Too many requests, please try again later."},
				del(time.Second, "p"),
			}, wantMatched: 1},
		{name: "a 403 from an admission webhook is judged", verbs: "delete",
			evs:         []ev{del(0, "p"), {verb: "delete", resource: "pods", ns: "a", name: "q", at: time.Second, code: 403, msg: `admission webhook "kd" denied the request: breaker open`}},
			wantMatched: 2, wantDenied: 1},
		{name: "a deletecollection counts the items of its response body", verbs: "delete",
			evs:         []ev{{verb: "deletecollection", resource: "pods", ns: "a", code: 200, response: `{"kind":"PodList","items":[{"metadata":{"name":"p1"}},{"metadata":{"name":"p2"}},{"metadata":{"name":"p3"}}]}`}},
			wantMatched: 3, wantDenied: 2},
		{name: "a deletecollection without a body counts one", verbs: "delete",
			evs:         []ev{{verb: "deletecollection", resource: "pods", ns: "a", code: 200}},
			wantMatched: 1},
		{name: "a create on pods/eviction is an evict", verbs: "evict",
			evs: []ev{{verb: "create", resource: "pods", sub: "eviction", ns: "a", name: "p", code: 201},
				{verb: "create", resource: "pods", sub: "eviction", ns: "a", name: "q", code: 201, at: time.Second}},
			wantMatched: 2, wantDenied: 1},
		{name: "a patch is an update and a write to a subresource is not judged", verbs: "update",
			evs: []ev{{verb: "patch", resource: "deployments", group: "apps", ns: "a", name: "d", code: 200},
				{verb: "update", resource: "deployments", group: "apps", sub: "status", ns: "a", name: "d", code: 200, at: time.Second},
				{verb: "update", resource: "deployments", group: "apps", sub: "scale", ns: "a", name: "d", code: 200, at: 2 * time.Second}},
			wantMatched: 1},
		{name: "leases, events and KubeDefender's own namespace are exempt", verbs: "delete",
			evs: []ev{{verb: "delete", resource: "leases", group: "coordination.k8s.io", ns: "a", name: "l", code: 200},
				{verb: "delete", resource: "events", ns: "a", name: "e", code: 200},
				{verb: "delete", resource: "pods", ns: "kubedefender-system", name: "kd", code: 200}},
			wantMatched: 0},
		{name: "a dry run is judged and charges nothing", verbs: "delete",
			evs:         []ev{{verb: "delete", resource: "pods", ns: "a", name: "p", code: 200, uri: "/api/v1/namespaces/a/pods/p?dryRun=All"}, del(time.Second, "q")},
			wantMatched: 2},
		{name: "a second delete of the same object (the kubelet's final delete) is free", verbs: "delete",
			evs:         []ev{del(0, "p"), del(30*time.Second, "p"), del(40*time.Second, "q")},
			wantMatched: 2, wantDenied: 1},
		{name: "a request is judged once with the status of its ResponseComplete stage", verbs: "delete",
			evs: []ev{{id: "r1", stage: stageRequestReceived, verb: "delete", resource: "pods", ns: "a", name: "gone"},
				{id: "r1", verb: "delete", resource: "pods", ns: "a", name: "gone", code: 404},
				{id: "r2", stage: stageRequestReceived, verb: "delete", resource: "pods", ns: "a", name: "p", at: time.Second},
				{id: "r2", verb: "delete", resource: "pods", ns: "a", name: "p", code: 200, at: time.Second}},
			wantMatched: 1},
		{name: "a window frees up as it slides", verbs: "delete",
			evs:         []ev{del(0, "p"), del(61*time.Second, "q")},
			wantMatched: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep := run(t, parsePolicy(t, fmt.Sprintf(oneBudget, tc.verbs)), writeLog(t, tc.evs))
			r := rep.Rules[0]
			if r.Matched != tc.wantMatched || r.Denied != tc.wantDenied {
				t.Errorf("matched %d, denied %d; want %d, %d", r.Matched, r.Denied, tc.wantMatched, tc.wantDenied)
			}
		})
	}
}

func TestRateLimitsSeeTheUserAgentAndUser(t *testing.T) {
	pol := parsePolicy(t, `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: t}
spec:
  rateLimits:
  - name: r
    match: {verbs: [list], resources: ["*"], userAgents: ["^agent/"]}
    per: [user, userAgent]
    qps: 1
    burst: 1
`)
	var evs []ev
	for i := range 3 {
		evs = append(evs, ev{verb: "list", resource: "pods", ua: "agent/1", user: "u1", code: 200, at: time.Duration(i) * 10 * time.Millisecond})
		evs = append(evs, ev{verb: "list", resource: "pods", ua: "agent/1", user: "u2", code: 200, at: time.Duration(i) * 10 * time.Millisecond})
		evs = append(evs, ev{verb: "list", resource: "pods", ua: "kubectl/1", user: "u1", code: 200, at: time.Duration(i) * 10 * time.Millisecond})
	}
	evs = append(evs, ev{verb: "list", resource: "pods", ua: "agent/1", user: "system:anonymous", code: 401, at: 30 * time.Millisecond})
	r := run(t, pol, writeLog(t, evs)).Rules[0]
	if r.Matched != 6 || r.Denied != 4 || len(r.TopUsers) != 2 || r.TopUserAgent[0].Value != "agent/1" {
		t.Errorf("matched %d, denied %d, users %v, user agents %v; want 6, 4 (two per user)", r.Matched, r.Denied, r.TopUsers, r.TopUserAgent)
	}
	if p := r.Peaks[0]; p.Window != "1s" || p.Used != 3 || p.Limit != 2 {
		t.Errorf("peak %+v, want 3 in 1s against burst+qps 2", p)
	}
}

func TestHTMLIsSelfContained(t *testing.T) {
	rep := run(t, loadPolicy(t, "testdata/policy.yaml"), "testdata/recorded.log")
	var b bytes.Buffer
	if err := rep.WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, bad := range []string{"<script", "<link", "@import", "url(", "src="} {
		if strings.Contains(page, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	if n := strings.Count(page, "http"); n != strings.Count(page, `xmlns="http://www.w3.org/2000/svg"`) {
		t.Errorf("page names %d URLs besides the SVG namespace", n-strings.Count(page, "xmlns"))
	}
	if strings.Count(page, "<svg") != 2 || !strings.Contains(page, "breaker trip") || !strings.Contains(page, "limit 3") {
		t.Errorf("page lacks a chart per window, the trip mark or the limit line:\n%s", page)
	}
}

func TestTableNamesTheFirstDenial(t *testing.T) {
	rep := run(t, loadPolicy(t, "testdata/policy.yaml"), "testdata/recorded.log")
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Replayed 83 requests", "pod-deletes  budget", "delete pods replay-e2e/victim-3 by kubedefender-admin",
		"breaker Closed -> Open", "deletecollection: 1 counted by the items of their response (2 items)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestReorderHoldsOnlyWritesForTheirStatus(t *testing.T) {
	o := newReorder(5*time.Second, time.Minute)
	at := t0.Add
	o.add(&event{AuditID: "watch", Stage: stageRequestReceived, Verb: "watch", Received: at(0), StageTime: at(0)}, "f", 1)
	o.add(&event{AuditID: "del", Stage: stageRequestReceived, Verb: "delete", Received: at(time.Second), StageTime: at(time.Second)}, "f", 2)
	o.add(&event{AuditID: "get", Stage: stageResponseComplete, Verb: "get", Received: at(10 * time.Second), StageTime: at(10 * time.Second)}, "f", 3)
	if r := o.pop(false); r == nil || r.id != "watch" {
		t.Fatalf("popped %+v, want the watch: a read is not held for its ResponseComplete", r)
	}
	if r := o.pop(false); r != nil {
		t.Fatalf("popped %+v, want the delete held until its ResponseComplete (or a minute)", r)
	}
	o.add(&event{AuditID: "del", Stage: stageResponseComplete, Verb: "delete", Received: at(time.Second), StageTime: at(11 * time.Second), Status: &status{Code: 404}}, "f", 4)
	if r := o.pop(false); r == nil || r.id != "del" || r.code != 404 {
		t.Fatalf("popped %+v, want the delete with its 404", r)
	}
	// A late stage of a request already released merges into nothing.
	o.add(&event{AuditID: "watch", Stage: stageResponseComplete, Verb: "watch", Received: at(0), StageTime: at(12 * time.Second)}, "f", 5)
	if r := o.pop(true); r == nil || r.id != "get" || o.pop(true) != nil || o.late != 0 {
		t.Fatalf("popped %+v (late %d), want only the get left", r, o.late)
	}
}

func TestALineOverTheBoundIsReportedAndSkipped(t *testing.T) {
	huge := ev{id: "huge", verb: "delete", resource: "pods", ns: "a", name: "p", code: 200, response: `"` + strings.Repeat("x", maxLine) + `"`}.line()
	p := filepath.Join(t.TempDir(), "audit.log")
	small := ev{id: "small", verb: "delete", resource: "pods", ns: "a", name: "q", code: 200, at: time.Second}.line()
	if err := os.WriteFile(p, []byte(huge+"\n"+small+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep := run(t, parsePolicy(t, fmt.Sprintf(oneBudget, "delete")), p)
	if rep.Skipped != 1 || len(rep.Problems) != 1 || rep.Problems[0].Line != 1 || !strings.Contains(rep.Problems[0].Err, "longer than 16 MiB") || rep.Events != 1 {
		t.Errorf("skipped %d %v, events %d; want line 1 skipped as too long and the next replayed", rep.Skipped, rep.Problems, rep.Events)
	}
}
