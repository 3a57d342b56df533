package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// Regression tests for the proxy findings of the attack review of issue 9
// (notes/review.md; each failed on the code before the fix). Each case of
// TestBudgetsAtTheProxyJudgeAttacksLikeTheAPIServer is what the API server
// does with the request (k8s.io/kubernetes v1.37.2) against what the proxy
// charges with --budgets-at=proxy.
func TestBudgetsAtTheProxyJudgeAttacksLikeTheAPIServer(t *testing.T) {
	const ns = "/api/v1/namespaces/default"
	const evictionOf = `{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p","namespace":"default"}`
	const evictions = `{name: evictions, match: {verbs: [evict], resources: [pods]}, windows: [{window: 1h, limit: 1}]}`
	const applyB = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n"
	for _, tc := range []struct {
		name    string
		budgets []string
		steps   []step
	}{
		{
			// pkg/registry/core/pod/storage/eviction.go propagateDryRun;
			// kubectl drain --dry-run=server sends exactly this.
			name:    "an eviction with dryRun only in the Eviction's deleteOptions takes nothing",
			budgets: []string{evictions},
			steps: []step{
				{method: "POST", path: ns + "/pods/p/eviction", contentType: "application/json", body: evictionOf + `,"deleteOptions":{"dryRun":["All"]}}`, wantCode: 200},
				{method: "POST", path: ns + "/pods/p/eviction", contentType: "application/yaml", body: "apiVersion: policy/v1\nkind: Eviction\nmetadata: {name: p}\ndeleteOptions: {dryRun: [All]}\n", wantCode: 200},
				{method: "POST", path: ns + "/pods/p/eviction", contentType: "application/json", body: `{"apiVersion":"policy/v1beta1","kind":"Eviction","metadata":{"name":"p"},"deleteOptions":{"dryRun":["All"]}}`, wantCode: 200},
				{method: "POST", path: ns + "/pods/p/eviction", contentType: runtime.ContentTypeProtobuf, body: protobufEviction(t, []string{"All"}), wantCode: 200},
				{method: "POST", path: ns + "/pods/p/eviction", contentType: "application/json", body: evictionOf + `}`, wantCode: 200},
				{method: "POST", path: ns + "/pods/q/eviction", contentType: "application/json", body: evictionOf + `}`, wantCode: 429},
			},
		},
		{
			name:    "an eviction with dryRun in the query is a dry run whatever its body",
			budgets: []string{evictions},
			steps: []step{
				{method: "POST", path: ns + "/pods/p/eviction?dryRun=All", contentType: "application/json", body: evictionOf + `,"deleteOptions":{}}`, wantCode: 200},
				{method: "POST", path: ns + "/pods/p/eviction", contentType: "application/json", body: evictionOf + `,"deleteOptions":{"gracePeriodSeconds":0}}`, wantCode: 200},
				{method: "POST", path: ns + "/pods/p/eviction", contentType: "application/json", body: evictionOf + `}`, wantCode: 429},
			},
		},
		{
			name:    "an eviction whose body cannot be decoded is a real one",
			budgets: []string{evictions},
			steps: []step{
				{method: "POST", path: ns + "/pods/p/eviction", contentType: "application/json", body: `{"deleteOptions":{"dryRun":`, wantCode: 200},
				{method: "POST", path: ns + "/pods/p/eviction", contentType: "application/json", body: `{"apiVersion":"v1","kind":"DeleteOptions","dryRun":["All"]}`, wantCode: 429},
			},
		},
		{
			name:    "an eviction whose body is over the cap is a real one",
			budgets: []string{evictions},
			steps: []step{
				{method: "POST", path: ns + "/pods/p/eviction", contentType: "application/json",
					body: evictionOf + `,"deleteOptions":{"dryRun":["All"]},"x":"` + strings.Repeat("a", MaxDeleteOptionsBytes) + `"}`, wantCode: 200},
				{method: "POST", path: ns + "/pods/p/eviction", contentType: "application/json", body: evictionOf + `}`, wantCode: 429},
			},
		},
		{
			// staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go:
			// an apply patch of a missing object creates it.
			name:    "a server-side apply is charged by a budget on create",
			budgets: []string{`{name: cm-creates, match: {verbs: [create], resources: [configmaps]}, windows: [{window: 1h, limit: 1}]}`},
			steps: []step{
				{method: "POST", path: ns + "/configmaps", contentType: "application/json", body: `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}`, wantCode: 200},
				{method: "PATCH", path: ns + "/configmaps/b?fieldManager=x&force=true", contentType: "application/apply-patch+yaml", body: applyB, wantCode: 429},
				{method: "PATCH", path: ns + "/configmaps/b", contentType: "application/merge-patch+json", body: `{}`, wantCode: 200},
			},
		},
		{
			name:    "a server-side apply dry run takes nothing from a budget on create",
			budgets: []string{`{name: cm-creates, match: {verbs: [create], resources: [configmaps]}, windows: [{window: 1h, limit: 1}]}`},
			steps: []step{
				{method: "PATCH", path: ns + "/configmaps/b?fieldManager=x&dryRun=All", contentType: "application/apply-patch+yaml", body: applyB, wantCode: 200},
				{method: "PATCH", path: ns + "/configmaps/b?fieldManager=x", contentType: "application/apply-patch+yaml", body: applyB, wantCode: 200},
				{method: "PATCH", path: ns + "/configmaps/c?fieldManager=x", contentType: "application/apply-patch+yaml", body: applyB, wantCode: 429},
			},
		},
		{
			name: "a server-side apply is charged by budgets on update and on create alike",
			budgets: []string{
				`{name: cm-creates, match: {verbs: [create], resources: [configmaps]}, windows: [{window: 1h, limit: 5}]}`,
				`{name: cm-updates, match: {verbs: [update], resources: [configmaps]}, windows: [{window: 1h, limit: 1}]}`,
			},
			steps: []step{
				{method: "PATCH", path: ns + "/configmaps/b?fieldManager=x", contentType: "application/apply-patch+yaml", body: applyB, wantCode: 200},
				{method: "PATCH", path: ns + "/configmaps/b?fieldManager=x", contentType: "application/apply-patch+yaml", body: applyB, wantCode: 429},
				{method: "POST", path: ns + "/configmaps", contentType: "application/json", body: `{}`, wantCode: 200},
			},
		},
		{
			name:    "a budget on create and update charges a server-side apply once",
			budgets: []string{`{name: cm-writes, match: {verbs: [create, update], resources: [configmaps]}, windows: [{window: 1h, limit: 2}]}`},
			steps: []step{
				{method: "PATCH", path: ns + "/configmaps/b?fieldManager=x", contentType: "application/apply-patch+yaml", body: applyB, wantCode: 200},
				{method: "PATCH", path: ns + "/configmaps/b?fieldManager=x", contentType: "application/apply-patch+yaml", body: applyB, wantCode: 200},
				{method: "PATCH", path: ns + "/configmaps/b?fieldManager=x", contentType: "application/apply-patch+yaml", body: applyB, wantCode: 429},
			},
		},
		{
			// Admission sees kubectl exec as CONNECT, and the webhook judges
			// no subresource create but pods/eviction (webhook toAttributes).
			name:    "exec, attach, port-forward, binding and token requests are not pod or service account creates",
			budgets: []string{`{name: creates, match: {verbs: [create], resources: [pods, serviceaccounts]}, windows: [{window: 1h, limit: 1}]}`},
			steps: []step{
				{method: "POST", path: ns + "/pods/p/exec?command=ls&stdout=true", wantCode: 200},
				{method: "POST", path: ns + "/pods/p/attach?stdout=true", wantCode: 200},
				{method: "POST", path: ns + "/pods/p/portforward", wantCode: 200},
				{method: "POST", path: ns + "/pods/p/binding", contentType: "application/json", body: `{}`, wantCode: 200},
				{method: "POST", path: ns + "/serviceaccounts/default/token", contentType: "application/json", body: `{}`, wantCode: 200},
				{method: "POST", path: ns + "/pods", contentType: "application/json", body: `{}`, wantCode: 200},
				{method: "POST", path: ns + "/pods", contentType: "application/json", body: `{}`, wantCode: 429},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := &bodyRecorder{}
			e := newEnv(t, envOptions{budgets: true, policy: budgetPolicyHead + "  - " + strings.Join(tc.budgets, "\n  - ") + "\n",
				upstream: up})
			c := e.client(e.userCert(t, "alice"), true)
			var sent []string
			for i, s := range tc.steps {
				code, body := e.call(t, c, s.method, s.path, s.contentType, s.body)
				if code != s.wantCode {
					t.Errorf("step %d (%s %s): code %d, want %d: %.200s", i, s.method, s.path, code, s.wantCode, body)
				}
				if code == http.StatusOK {
					sent = append(sent, s.body)
				}
			}
			up.check(t, sent)
		})
	}
}

// TestAnOpenPodCreateBreakerLeavesKubectlExecAlone: with budgets at the
// webhook, the proxy's early reject follows the same verbs, so a tripped
// breaker on pod creates does not refuse kubectl exec.
func TestAnOpenPodCreateBreakerLeavesKubectlExecAlone(t *testing.T) {
	e := newEnv(t, envOptions{policy: budgetPolicyHead +
		"  - {name: pod-creates, match: {verbs: [create], resources: [pods]}, windows: [{window: 1h, limit: 1}], breaker: {recovery: Manual}}\n"})
	// Given a tripped Manual breaker on pod creates, charged as the webhook would
	for range 2 {
		e.engine.Decide(context.Background(), &limiter.Attributes{Attributes: policy.Attributes{
			Verb: "create", Resource: "pods", Namespace: "default", User: "alice"}, Checks: limiter.CheckBudgets})
	}
	c := e.client(e.userCert(t, "alice"), false)
	const ns = "/api/v1/namespaces/default"
	for i, s := range []step{
		// When a pod is created, it is refused early by the proxy
		{method: "POST", path: ns + "/pods", contentType: "application/json", body: `{}`, wantCode: 403},
		// Then kubectl exec and port-forward still pass
		{method: "POST", path: ns + "/pods/p/exec?command=ls&stdout=true", wantCode: 200},
		{method: "POST", path: ns + "/pods/p/portforward", wantCode: 200},
	} {
		if code, body := e.call(t, c, s.method, s.path, s.contentType, s.body); code != s.wantCode {
			t.Errorf("step %d (%s %s): code %d, want %d: %.200s", i, s.method, s.path, code, s.wantCode, body)
		}
	}
}

func protobufEviction(t *testing.T, dryRun []string) string {
	t.Helper()
	s := evictionCodecs.WithoutConversion()
	info, ok := runtime.SerializerInfoForMediaType(evictionCodecs.SupportedMediaTypes(), runtime.ContentTypeProtobuf)
	if !ok {
		t.Fatal("no protobuf serializer")
	}
	ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: "p"}, DeleteOptions: &metav1.DeleteOptions{DryRun: dryRun}}
	b, err := runtime.Encode(s.EncoderForVersion(info.Serializer, policyv1.SchemeGroupVersion), ev)
	if err != nil {
		t.Fatalf("failed to encode the eviction: %v", err)
	}
	return string(b)
}

// offeredReader hands out body bytes in chunks and records the largest
// buffer it was offered; with block set it fails the read instead of
// waiting once its bytes are out, as a client that stopped sending does
// when its read deadline passes.
type offeredReader struct {
	data    []byte
	chunk   int
	given   int
	offered []int // len(p) of each Read
	// buffers: the size of the buffer behind each Read (given before, plus
	// the room offered), for a reader filling one growing buffer.
	buffers []int
	fail    error
}

func (r *offeredReader) Read(p []byte) (int, error) {
	r.offered = append(r.offered, len(p))
	r.buffers = append(r.buffers, r.given+len(p))
	if len(r.data) == 0 {
		if r.fail != nil {
			return 0, r.fail
		}
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.chunk)], r.data)
	r.data = r.data[n:]
	r.given += n
	return n, nil
}

func (r *offeredReader) Close() error { return nil }

// TestThePeekHoldsNoMoreThanWhatArrived: the options peek never sizes its
// buffer from the declared Content-Length. Before any byte arrives it has
// peekStart bytes; after, at most twice what arrived; never more than the
// cap (plus the one byte that tells a longer body). A body declared longer
// than the cap is not read at all. The finding: one HTTP/2 connection of
// 128 header-only DELETEs declaring 1 MiB pinned 122 MiB.
func TestThePeekHoldsNoMoreThanWhatArrived(t *testing.T) {
	stopped := errors.New("the client stopped sending")
	for _, tc := range []struct {
		name          string
		declared      int64 // Content-Length; -1 chunked
		sent          int
		chunk         int
		fail          error
		wantErr       error
		wantRead      int
		wantNoReading bool
	}{
		{name: "a declared body that never comes is offered only the starting buffer", declared: MaxDeleteOptionsBytes, fail: stopped, wantErr: stopped},
		{name: "a chunked body that never comes is offered only the starting buffer", declared: -1, fail: stopped, wantErr: stopped},
		{name: "a body that stops half way holds about what arrived", declared: MaxDeleteOptionsBytes, sent: 3000, chunk: 100, fail: stopped, wantErr: stopped},
		{name: "a small body is read whole", declared: 300, sent: 300, chunk: 7, wantRead: 300},
		{name: "a body of exactly the cap is read whole", declared: MaxDeleteOptionsBytes, sent: MaxDeleteOptionsBytes, chunk: 4096, wantRead: MaxDeleteOptionsBytes},
		{name: "a chunked body over the cap stops one byte past it", declared: -1, sent: 4 * MaxDeleteOptionsBytes, chunk: 1 << 20, wantErr: errBodyTooLarge},
		{name: "a body declared over the cap is not read at all", declared: MaxDeleteOptionsBytes + 1, sent: 10, chunk: 10, wantErr: errBodyTooLarge, wantNoReading: true},
		{name: "a body declared at 1 MiB is not read at all", declared: 1 << 20, fail: stopped, wantErr: errBodyTooLarge, wantNoReading: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(strings.Repeat("x", tc.sent))
			body := &offeredReader{data: data, chunk: max(tc.chunk, 1), fail: tc.fail}
			r := httptest.NewRequest(http.MethodDelete, "/api/v1/namespaces/default/pods/p", nil)
			r.Body, r.ContentLength = body, tc.declared
			got, err := peekBody(r, MaxDeleteOptionsBytes)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if len(got) != tc.wantRead {
				t.Errorf("read %d bytes, want %d", len(got), tc.wantRead)
			}
			if tc.wantNoReading {
				if len(body.offered) > 0 {
					t.Errorf("the body was read (%d reads) although its declared length is over the cap", len(body.offered))
				}
				return
			}
			if len(body.offered) == 0 || body.offered[0] > peekStart {
				t.Errorf("the first read was offered %v bytes, want at most %d whatever the declared length", body.offered, peekStart)
			}
			arrived := tc.sent - len(body.data)
			held := 0
			for _, n := range body.buffers {
				held = max(held, n)
			}
			if held > max(peekStart, 2*arrived) || held > MaxDeleteOptionsBytes+1 {
				t.Errorf("the buffer grew to %d bytes for %d that arrived, want at most max(%d, %d) and at most %d", held, arrived, peekStart, 2*arrived, MaxDeleteOptionsBytes+1)
			}
			rest, err := io.ReadAll(r.Body)
			if tc.fail == nil && (err != nil || string(rest) != string(data)) {
				t.Errorf("the body left for the upstream is %d bytes (%v), want the %d sent", len(rest), err, len(data))
			}
		})
	}
}

// TestDeclaredButUnsentOptionsBodiesAreAnsweredWhenTheirDeadlinePasses:
// DELETEs and evictions that declare a body and never send it, many on one
// HTTP/2 connection, are each answered 408 by the proxy once the body read
// deadline passes: no goroutine or buffer waits for the client to hang up,
// nothing reaches the upstream and nothing is charged.
func TestDeclaredButUnsentOptionsBodiesAreAnsweredWhenTheirDeadlinePasses(t *testing.T) {
	for _, tc := range []struct {
		name string
		h2   bool
	}{
		{name: "over HTTP/2, many streams on one connection", h2: true},
		{name: "over HTTP/1.1", h2: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var upstream atomic.Int64
			e := newEnv(t, envOptions{mode: AuthPassthrough, budgets: true, bodyReadTimeout: 200e6, // 200ms
				policy: budgetPolicyHead + "  - {name: deletes, match: {verbs: [delete, evict], resources: [pods]}, windows: [{window: 1h, limit: 1}]}\n",
				upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					upstream.Add(1)
					_, _ = w.Write([]byte(`{}`))
				})})
			c := e.client(nil, tc.h2)
			c.Timeout = 0
			const streams = 32
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			codes := make([]int, streams)
			var wg sync.WaitGroup
			for i := range streams {
				method, path := http.MethodDelete, "/api/v1/namespaces/default/pods/p"+strconv.Itoa(i)
				if i%2 == 1 {
					method, path = http.MethodPost, path+"/eviction"
				}
				pr, pw := io.Pipe() // never written: the body never comes
				defer pw.Close()
				req, err := http.NewRequestWithContext(ctx, method, e.proxyURL+path, pr)
				if err != nil {
					t.Fatal(err)
				}
				req.ContentLength = MaxDeleteOptionsBytes
				req.Header.Set("Content-Type", "application/json")
				wg.Go(func() {
					resp, err := c.Do(req)
					if err != nil {
						t.Errorf("%s %s: %v", method, path, err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					codes[i] = resp.StatusCode
				})
			}
			wg.Wait()
			for i, code := range codes {
				if code != http.StatusRequestTimeout {
					t.Errorf("request %d: code %d, want 408", i, code)
				}
			}
			if n := upstream.Load(); n != 0 {
				t.Errorf("the upstream got %d of the requests whose body never came, want none", n)
			}
			// And nothing was charged: a real delete still passes.
			if code, body := e.call(t, e.client(nil, tc.h2), "DELETE", "/api/v1/namespaces/default/pods/x", "", ""); code != http.StatusOK {
				t.Errorf("a real delete after the unsent ones: %d, want 200 (they took nothing): %s", code, body)
			}
		})
	}
}

// frontProxyIdentityOnly is an API server without anonymous auth that
// accepts only the readiness probe's identity over the front-proxy
// certificate.
func frontProxyIdentityOnly(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || r.Header.Get("X-Remote-User") != readinessProbeUser {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	_, _ = w.Write([]byte("ok"))
}

// TestReadinessProbesWithCredentialsAndTellsAnonymousCallersNothing: an API
// server started with --anonymous-auth=false answers an anonymous /readyz
// with 401, so the proxy probes with the best credentials it has; and the
// unauthenticated /kubedefender/readyz answers without the upstream's
// error or address, which go to the log.
func TestReadinessProbesWithCredentialsAndTellsAnonymousCallersNothing(t *testing.T) {
	const secret = "etcd at 10.0.0.7:2379: connection refused"
	for _, tc := range []struct {
		name     string
		mode     AuthMode
		noFront  bool
		upstream func(w http.ResponseWriter, r *http.Request)
		gone     bool // the upstream is stopped
		wantCode int
	}{
		{
			name:     "in front-proxy mode the probe carries the front-proxy identity, which an API server without anonymous auth accepts",
			mode:     AuthFrontProxy,
			upstream: frontProxyIdentityOnly,
			wantCode: http.StatusOK,
		},
		{
			name:     "in passthrough mode with a front-proxy certificate the probe carries that identity too",
			mode:     AuthPassthrough,
			upstream: frontProxyIdentityOnly,
			wantCode: http.StatusOK,
		},
		{
			name: "with no credentials at all an API server refusing anonymous callers counts as up",
			mode: AuthPassthrough, noFront: true,
			upstream: func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "Unauthorized", http.StatusUnauthorized) },
			wantCode: http.StatusOK,
		},
		{
			name: "an unready upstream is 503 without its error text",
			mode: AuthFrontProxy,
			upstream: func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, secret, http.StatusInternalServerError)
			},
			wantCode: http.StatusServiceUnavailable,
		},
		{
			name: "an unreachable upstream is 503 without its address",
			mode: AuthPassthrough, noFront: true,
			upstream: func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) },
			gone:     true,
			wantCode: http.StatusServiceUnavailable,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{mode: tc.mode, noFront: tc.noFront, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/readyz" {
					http.NotFound(w, r)
					return
				}
				tc.upstream(w, r)
			})})
			if tc.gone {
				e.upstream.Close()
			}
			code, body := e.call(t, e.client(nil, true), http.MethodGet, "/kubedefender/readyz", "", "")
			if code != tc.wantCode {
				t.Errorf("readyz: %d %q, want %d", code, body, tc.wantCode)
			}
			host := strings.TrimPrefix(e.upstream.URL, "https://")
			if strings.Contains(body, "10.0.0.7") || strings.Contains(body, host) || strings.Contains(body, "refused") {
				t.Errorf("readyz told an anonymous caller %q", body)
			}
			if tc.wantCode != http.StatusOK && !strings.Contains(e.logs.String(), "upstream not ready") {
				t.Errorf("the reason the upstream is not ready was not logged: %s", e.logs.String())
			}
		})
	}
}
