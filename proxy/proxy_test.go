package proxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/internal/testwait"
)

func decodeStatus(t *testing.T, resp *http.Response) status {
	t.Helper()
	var s status
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("failed to decode a Status from %q: %v", body, err)
	}
	return s
}

func TestIdentityReachesTheUpstreamOnlyFromTheProxy(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  AuthMode
		cert  []string // CN, groups...
		token string
		spoof bool
		// foreignCert: the client presents a certificate the client CA did not sign.
		foreignCert bool
		wantCode    int
		wantUser    string
		wantGroup   []string
		wantAuthz   string
	}{
		{name: "a certificate user is forwarded as X-Remote-User with its groups", mode: AuthFrontProxy, cert: []string{"alice", "dev"},
			wantCode: 200, wantUser: "alice", wantGroup: []string{"dev", "system:authenticated"}},
		{name: "spoofed identity headers from a certificate user are replaced", mode: AuthFrontProxy, cert: []string{"alice"}, spoof: true,
			wantCode: 200, wantUser: "alice", wantGroup: []string{"system:authenticated"}},
		{name: "a token user keeps its Authorization header and reaches the upstream without a client certificate", mode: AuthFrontProxy, token: "tok-bob",
			wantCode: 200, wantAuthz: "Bearer tok-bob"},
		{name: "spoofed identity headers from a token user are removed", mode: AuthFrontProxy, token: "tok-bob", spoof: true,
			wantCode: 200, wantAuthz: "Bearer tok-bob"},
		{name: "a certificate and a token: the certificate user is asserted and the token removed", mode: AuthFrontProxy, cert: []string{"alice", "dev"}, token: "tok-bob", spoof: true,
			wantCode: 200, wantUser: "alice", wantGroup: []string{"dev", "system:authenticated"}},
		{name: "a certificate and an unknown token: the certificate user is asserted and the token removed", mode: AuthFrontProxy, cert: []string{"alice"}, token: "nope",
			wantCode: 200, wantUser: "alice", wantGroup: []string{"system:authenticated"}},
		{name: "an untrusted certificate and a token: the token user keeps its token", mode: AuthFrontProxy, foreignCert: true, token: "tok-bob",
			wantCode: 200, wantAuthz: "Bearer tok-bob"},
		{name: "an unknown token gets 401 from the proxy", mode: AuthFrontProxy, token: "nope", wantCode: 401},
		{name: "no credentials and spoofed headers get 401", mode: AuthFrontProxy, spoof: true, wantCode: 401},
		{name: "passthrough forwards the token untouched and no identity headers", mode: AuthPassthrough, token: "tok-bob", spoof: true,
			wantCode: 200, wantAuthz: "Bearer tok-bob"},
		{name: "passthrough forwards an unknown token for the API server to judge", mode: AuthPassthrough, token: "nope", spoof: true,
			wantCode: 200, wantAuthz: "Bearer nope"},
		{name: "passthrough asserts a certificate user through the front-proxy certificate", mode: AuthPassthrough, cert: []string{"carol"}, spoof: true,
			wantCode: 200, wantUser: "carol", wantGroup: []string{"system:authenticated"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{mode: tc.mode, tokens: map[string]string{"tok-bob": "bob"}})
			c := e.client(nil, false)
			if len(tc.cert) > 0 {
				c = e.client(e.userCert(t, tc.cert[0], tc.cert[1:]...), false)
			}
			if tc.foreignCert {
				_, _, pair := e.frontCA.issue(t, e.dir, "mallory", []string{"system:masters"}, false)
				c = e.client(&pair, false)
			}
			req, _ := http.NewRequest(http.MethodGet, e.proxyURL+"/api/v1/namespaces/default/pods", nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			if tc.spoof {
				req.Header.Set("X-Remote-User", "system:admin")
				req.Header.Add("X-Remote-Group", "system:masters")
				req.Header.Set("x-remote-extra-scopes", "all")
				req.Header.Set("X-Remote-Uid", "0")
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("failed to call the proxy: %v", err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("code = %d, want %d", resp.StatusCode, tc.wantCode)
			}
			if tc.wantCode == 401 {
				if s := decodeStatus(t, resp); s.Kind != "Status" || s.Reason != "Unauthorized" || s.Code != 401 {
					t.Errorf("body = %+v, want an Unauthorized Status", s)
				}
				return
			}
			up := e.upstreamSaw()
			if got := up.Header.Get("X-Remote-User"); got != tc.wantUser {
				t.Errorf("upstream X-Remote-User = %q, want %q", got, tc.wantUser)
			}
			if got := up.Header.Values("X-Remote-Group"); strings.Join(got, ",") != strings.Join(tc.wantGroup, ",") {
				t.Errorf("upstream X-Remote-Group = %q, want %q", got, tc.wantGroup)
			}
			for k := range up.Header {
				if k == "X-Remote-Extra-Scopes" || k == "X-Remote-Uid" {
					t.Errorf("upstream got client-sent header %s", k)
				}
			}
			if got := up.Header.Get("Authorization"); got != tc.wantAuthz {
				t.Errorf("upstream Authorization = %q, want %q", got, tc.wantAuthz)
			}
			presented := up.TLS != nil && len(up.TLS.PeerCertificates) > 0
			if presented != (tc.wantUser != "") {
				t.Errorf("client certificate presented upstream = %v, want %v", presented, tc.wantUser != "")
			}
			if presented && up.TLS.PeerCertificates[0].Subject.CommonName != "front-proxy-client" {
				t.Errorf("upstream saw client certificate %q, want front-proxy-client", up.TLS.PeerCertificates[0].Subject.CommonName)
			}
			if got := up.Header.Get("X-Remote-User"); tc.spoof && got == "system:admin" {
				t.Errorf("upstream got the client-sent X-Remote-User")
			}
		})
	}
}

func TestPassthroughRefusesCertificateUsersWithoutAFrontProxyCertificate(t *testing.T) {
	e := newEnv(t, envOptions{mode: AuthPassthrough, noFront: true})
	resp, err := e.client(e.userCert(t, "carol"), false).Get(e.proxyURL + "/api/v1/pods")
	if err != nil {
		t.Fatalf("failed to call the proxy: %v", err)
	}
	defer resp.Body.Close()
	if s := decodeStatus(t, resp); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(s.Message, "front-proxy") {
		t.Errorf("got %d %q, want 401 explaining that certificates need front-proxy mode", resp.StatusCode, s.Message)
	}
}

func TestARateLimitedClientGetsATooManyRequestsStatus(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.client(e.userCert(t, "agent"), false)
	var last *http.Response
	for i := range 3 {
		req, _ := http.NewRequest(http.MethodGet, e.proxyURL+"/api/v1/pods", nil)
		req.Header.Set("User-Agent", "flood/1.0")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("failed to call the proxy: %v", err)
		}
		if i < 2 {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("request %d within the burst: code %d", i, resp.StatusCode)
			}
		}
		last = resp
	}
	defer last.Body.Close()
	s := decodeStatus(t, last)
	if last.StatusCode != http.StatusTooManyRequests || s.Reason != "TooManyRequests" || s.Code != 429 {
		t.Fatalf("got %d %+v, want a 429 TooManyRequests Status", last.StatusCode, s)
	}
	if !strings.Contains(s.Message, "flood-gets") {
		t.Errorf("message %q does not name the rule", s.Message)
	}
	if ra := last.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("Retry-After = %q, want whole seconds", ra)
	}
	// Another user agent of the same user is not limited by that key.
	resp, err := c.Get(e.proxyURL + "/api/v1/pods")
	if err != nil {
		t.Fatalf("failed to call the proxy: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("another user agent got %d, want 200", resp.StatusCode)
	}
}

func TestAnUnreachableUpstreamAnswers503AtOnce(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.upstream.Close()
	c := e.client(e.userCert(t, "alice"), false)
	began := time.Now()
	resp, err := c.Get(e.proxyURL + "/api/v1/pods")
	if err != nil {
		t.Fatalf("failed to call the proxy: %v", err)
	}
	defer resp.Body.Close()
	took := time.Since(began)
	if s := decodeStatus(t, resp); resp.StatusCode != http.StatusServiceUnavailable || s.Reason != "ServiceUnavailable" {
		t.Errorf("got %d %+v, want a 503 ServiceUnavailable Status", resp.StatusCode, s)
	}
	if took > 2*time.Second {
		t.Errorf("took %s, want a fast answer", took)
	}
}

func TestStreamedResponsesAreFlushedAsTheyHappen(t *testing.T) {
	for _, tc := range []struct {
		name string
		path string
		h2   bool
	}{
		{name: "watch events over HTTP/1.1", path: "/api/v1/pods?watch=true"},
		{name: "watch events over HTTP/2", path: "/api/v1/pods?watch=true", h2: true},
		// Not long-running, but of unknown length: still flushed per write.
		{name: "a list streamed in chunks", path: "/api/v1/pods"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events := make(chan string)
			defer close(events)
			e := newEnv(t, envOptions{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusOK)
				_ = http.NewResponseController(w).Flush()
				for ev := range events {
					_, _ = fmt.Fprintln(w, ev)
					_ = http.NewResponseController(w).Flush()
				}
			})})
			resp, err := e.client(e.userCert(t, "watcher"), tc.h2).Get(e.proxyURL + tc.path)
			if err != nil {
				t.Fatalf("failed to start the request: %v", err)
			}
			defer resp.Body.Close()
			if tc.h2 && resp.ProtoMajor != 2 {
				t.Errorf("protocol = %s, want HTTP/2", resp.Proto)
			}
			rd := bufio.NewReader(resp.Body)
			for i := range 3 {
				want := fmt.Sprintf(`{"type":"ADDED","n":%d}`, i)
				sent := time.Now()
				events <- want
				line, err := rd.ReadString('\n')
				if err != nil || strings.TrimSpace(line) != want {
					t.Fatalf("event %d = %q, %v; want %s", i, line, err, want)
				}
				if d := time.Since(sent); d > 500*time.Millisecond {
					t.Errorf("event %d took %s", i, d)
				}
			}
		})
	}
}

func TestLogsNeverContainBearerTokens(t *testing.T) {
	const secret = "s3cr3t-token-value"
	for _, mode := range []AuthMode{AuthFrontProxy, AuthPassthrough} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t, envOptions{mode: mode, tokens: map[string]string{secret: "bob"}})
			for _, path := range []string{"/api/v1/pods", "/api/v1/namespaces/x/pods/y/exec?command=ls"} {
				for _, tok := range []string{secret, secret + "-wrong"} {
					req, _ := http.NewRequest(http.MethodGet, e.proxyURL+path, nil)
					req.Header.Set("Authorization", "Bearer "+tok)
					req.Header.Set("User-Agent", "flood/1")
					resp, err := e.client(nil, false).Do(req)
					if err == nil {
						resp.Body.Close()
					}
				}
			}
			e.upstream.Close() // upstream errors are logged too
			req, _ := http.NewRequest(http.MethodGet, e.proxyURL+"/api/v1/pods", nil)
			req.Header.Set("Authorization", "Bearer "+secret)
			if resp, err := e.client(nil, false).Do(req); err == nil {
				resp.Body.Close()
			}
			logs := e.logs.String()
			if logs == "" {
				t.Fatalf("no logs written; the test proves nothing")
			}
			if strings.Contains(logs, secret) {
				t.Errorf("a log line holds the bearer token:\n%s", logs)
			}
		})
	}
}

func TestPriorityLevelsQueueRejectAndReleaseSeats(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	inflight, peak := 0, 0
	clk := clocktesting.NewFakeClock(time.Now())
	const maxWait = 300 * time.Millisecond
	e := newEnv(t, envOptions{maxWait: maxWait, clock: clk, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("watch") == "true" {
			w.WriteHeader(http.StatusOK)
			http.NewResponseController(w).Flush()
			<-r.Context().Done()
			return
		}
		mu.Lock()
		inflight++
		peak = max(peak, inflight)
		mu.Unlock()
		<-release
		mu.Lock()
		inflight--
		mu.Unlock()
	})})
	c := e.client(e.userCert(t, "slowpoke"), false)
	get := func(path string) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, e.proxyURL+path, nil)
		req.Header.Set("User-Agent", "slow/1")
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	t.Run("watches hold a seat only until their response starts", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for range 3 { // the workload level has one seat
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.proxyURL+"/api/v1/pods?watch=true", nil)
			req.Header.Set("User-Agent", "slow/1")
			resp, err := c.Do(req)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("watch: %v %v", resp, err)
			}
			defer resp.Body.Close()
		}
	})

	t.Run("a request waiting longer than the maximum gets 429", func(t *testing.T) {
		results := make(chan int, 4)
		for range 4 { // one runs, two queue (queueLengthLimit 2 over a hand of 2), one is refused or times out
			go func() {
				code, _ := get("/api/v1/pods")
				results <- code
			}()
		}
		// When one holds the seat and the others are queued (each with its
		// wait's timer) or refused, and the maximum wait passes
		testwait.Until(t, "one request runs and the others queue or are refused", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return inflight == 1 && clk.Waiters()+len(results) == 3
		})
		clk.Step(maxWait)
		testwait.Until(t, "the queued requests are answered", func() bool { return len(results) == 3 })
		close(release)
		counts := map[int]int{}
		for range 4 {
			counts[<-results]++
		}
		// Then the one that ran succeeds and the others are refused
		if counts[200] != 1 || counts[429] != 3 {
			t.Errorf("codes = %v, want one 200 and three 429", counts)
		}
		if peak > 1 {
			t.Errorf("%d requests ran at once at a one-seat level", peak)
		}
	})
}

func TestAReloadKeepsQueuedRequests(t *testing.T) {
	release := make(chan struct{})
	e := newEnv(t, envOptions{maxWait: 10 * time.Second, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	})})
	c := e.client(e.userCert(t, "slowpoke"), false)
	results := make(chan int, 3)
	for range 3 {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, e.proxyURL+"/api/v1/pods", nil)
			req.Header.Set("User-Agent", "slow/1")
			resp, err := c.Do(req)
			if err != nil {
				results <- 0
				return
			}
			resp.Body.Close()
			results <- resp.StatusCode
		}()
	}
	// Given one running and two queued requests
	testwait.Until(t, "two requests are queued", func() bool { return e.queued("workload") == 2 })
	// When the policy reloads with more seats and other queue sizes
	e.policy.push(t, strings.Replace(strings.Replace(basePolicy, "concurrency: 2", "concurrency: 20", 1),
		"queues: 4, handSize: 2, queueLengthLimit: 2", "queues: 2, handSize: 1, queueLengthLimit: 5", 1))
	close(release)
	// Then every request is served
	for range 3 {
		if code := <-results; code != 200 {
			t.Errorf("code = %d, want 200", code)
		}
	}
}

func (e *env) queued(level string) float64 {
	mfs, _ := e.registry.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "kubedefender_proxy_queue_length" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == level {
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func TestAFrontProxyTokenUserKeepsOnlyTheTokenThatAuthenticatedIt(t *testing.T) {
	bearer := func(tok string) string {
		return bearerProtocolPrefix + base64.RawURLEncoding.EncodeToString([]byte(tok))
	}
	for _, tc := range []struct {
		name               string
		authz, protocol    string
		wantAuthz          string
		wantProtocol       string
		wantIdentityHeader bool
	}{
		{name: "a WebSocket bearer protocol that authenticates goes upstream with the other protocols",
			protocol: bearer("tok-bob") + ", v4.channel.k8s.io", wantProtocol: bearer("tok-bob") + ", v4.channel.k8s.io"},
		{name: "an unknown Authorization token beside an authenticating bearer protocol is removed",
			authz: "Bearer nope", protocol: bearer("tok-bob") + ", v4.channel.k8s.io", wantProtocol: bearer("tok-bob") + ", v4.channel.k8s.io"},
		{name: "an authenticating Authorization token goes upstream without the bearer protocol beside it",
			authz: "Bearer tok-bob", protocol: bearer("tok-eve") + ", v4.channel.k8s.io", wantAuthz: "Bearer tok-bob", wantProtocol: "v4.channel.k8s.io"},
		{name: "a protocol that only contains the bearer prefix does not hide the bearer protocol that authenticated",
			protocol: "v4, x" + bearer("tok-eve") + ", " + bearer("tok-bob"), wantProtocol: "v4, x" + bearer("tok-eve") + ", " + bearer("tok-bob")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{tokens: map[string]string{"tok-bob": "bob", "tok-eve": "eve"}})
			req, _ := http.NewRequest(http.MethodGet, e.proxyURL+"/api/v1/namespaces/default/pods/p/exec?command=sh", nil)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-Websocket-Version", "13")
			req.Header.Set("Sec-Websocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			req.Header.Set("Sec-Websocket-Protocol", tc.protocol)
			req.Header.Set("X-Remote-User", "system:admin")
			if tc.authz != "" {
				req.Header.Set("Authorization", tc.authz)
			}
			resp, err := e.client(nil, false).Do(req)
			if err != nil {
				t.Fatalf("failed to call the proxy: %v", err)
			}
			resp.Body.Close()
			up := e.upstreamSaw()
			if up == nil {
				t.Fatalf("the upstream saw nothing; the proxy answered %d", resp.StatusCode)
			}
			if got := up.Header.Get("Authorization"); got != tc.wantAuthz {
				t.Errorf("upstream Authorization = %q, want %q", got, tc.wantAuthz)
			}
			if got := strings.Join(up.Header.Values("Sec-Websocket-Protocol"), ", "); got != tc.wantProtocol {
				t.Errorf("upstream Sec-WebSocket-Protocol = %q, want %q", got, tc.wantProtocol)
			}
			if got := up.Header.Get("X-Remote-User"); got != "" {
				t.Errorf("upstream X-Remote-User = %q, want none", got)
			}
			if up.TLS != nil && len(up.TLS.PeerCertificates) > 0 {
				t.Errorf("upstream saw client certificate %q, want none", up.TLS.PeerCertificates[0].Subject.CommonName)
			}
		})
	}
}

func TestAConnectionHeaderMayNotDropTheCredentialsTheProxyJudged(t *testing.T) {
	for _, connection := range []string{"Authorization", "keep-alive, authorization", "Upgrade, Sec-WebSocket-Protocol", "Impersonate-User", "impersonate-extra-scopes"} {
		t.Run(connection, func(t *testing.T) {
			e := newEnv(t, envOptions{tokens: map[string]string{"tok-bob": "bob"}})
			req, _ := http.NewRequest(http.MethodGet, e.proxyURL+"/api/v1/namespaces/default/pods", nil)
			req.Header.Set("Authorization", "Bearer tok-bob")
			req.Header.Set("Connection", connection)
			resp, err := e.client(nil, false).Do(req)
			if err != nil {
				t.Fatalf("failed to call the proxy: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "Connection header may not name") {
				t.Errorf("proxy answered %d %s, want 400 naming the Connection header", resp.StatusCode, body)
			}
			if up := e.upstreamSaw(); up != nil {
				t.Errorf("the upstream saw the request (Authorization %q), want it refused before", up.Header.Get("Authorization"))
			}
		})
	}
}
