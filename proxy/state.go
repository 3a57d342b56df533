package proxy

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"k8s.io/apiserver/pkg/authentication/user"
	apirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/utils/clock"

	"github.com/kubedefender/kubedefender/limiter"
)

// reqState is what the filters learn about one request, shared through its
// context. One is allocated per request, by WithInstrumentation.
type reqState struct {
	start time.Time
	user  user.Info
	// forwardIdentity: send X-Remote-* upstream over the front-proxy connection.
	forwardIdentity bool
	info            *apirequest.RequestInfo
	attrs           limiter.Attributes
	longRunning     bool
	level           string
	queueWait       time.Duration
	// upstream round trip, until response headers (set by the transport wrapper).
	upstream time.Duration

	mu        sync.Mutex
	onStart   func() // called once when the response starts
	started   bool
	startedAt time.Time
}

type stateKey struct{}

// stateOf returns the request's state; a request that did not pass
// WithInstrumentation gets a fresh one, so each filter also works alone.
func stateOf(r *http.Request) *reqState {
	if st, ok := r.Context().Value(stateKey{}).(*reqState); ok {
		return st
	}
	return &reqState{start: time.Now()}
}

func withState(r *http.Request, st *reqState) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
}

// responseStarted records that the response began (headers written, or the
// connection hijacked for an upgrade) and runs onStart once.
func (st *reqState) responseStarted(now time.Time) {
	st.mu.Lock()
	if st.started {
		st.mu.Unlock()
		return
	}
	st.started, st.startedAt = true, now
	fn := st.onStart
	st.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// setOnStart registers fn to run when the response starts, or now if it has.
func (st *reqState) setOnStart(fn func()) {
	st.mu.Lock()
	if st.started {
		st.mu.Unlock()
		fn()
		return
	}
	st.onStart = fn
	st.mu.Unlock()
}

// responseWriter records the status and the moment the response starts. It
// implements Flush and Hijack itself (so that an upgrade is seen) and
// Unwrap for everything else http.ResponseController may need.
type responseWriter struct {
	http.ResponseWriter
	st    *reqState
	clock clock.PassiveClock
	code  int
}

func (w *responseWriter) WriteHeader(code int) {
	if w.code == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.code = code
		w.st.responseStarted(w.clock.Now())
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

func (w *responseWriter) FlushError() error {
	if w.code == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *responseWriter) Flush() { _ = w.FlushError() }

func (w *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && w.code == 0 {
		w.code = http.StatusSwitchingProtocols
		w.st.responseStarted(w.clock.Now())
	}
	return c, rw, err
}

func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// WithInstrumentation counts every answer by verb and code and observes the
// latency the proxy adds: the time to the response's start, less the queue
// wait (a deliberate delay, measured on its own) and the upstream's own time.
func WithInstrumentation(m *metrics, clk clock.PassiveClock, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := &reqState{start: clk.Now()}
		rw := &responseWriter{ResponseWriter: w, st: st, clock: clk}
		next.ServeHTTP(rw, withState(r, st))
		code := rw.code
		if code == 0 {
			// Nothing written: the client went away or the handler aborted.
			code = 499
		}
		verb := "unknown"
		if st.info != nil {
			verb = boundedVerb(st.info.Verb)
		}
		m.requests.WithLabelValues(verb, codeString(code)).Inc()
		st.mu.Lock()
		started, at := st.started, st.startedAt
		st.mu.Unlock()
		if started {
			if added := at.Sub(st.start) - st.queueWait - st.upstream; added >= 0 {
				m.added.Observe(added.Seconds())
			}
		}
	})
}

var knownVerbs = map[string]bool{
	"get": true, "list": true, "watch": true, "create": true, "update": true, "patch": true, "delete": true,
	"deletecollection": true, "proxy": true, "head": true, "post": true, "put": true, "options": true, "connect": true,
}

func boundedVerb(v string) string {
	if knownVerbs[v] {
		return v
	}
	return "other"
}

var codeStrings = func() map[int]string {
	m := map[int]string{}
	for c := 100; c < 600; c++ {
		m[c] = itoa(c)
	}
	return m
}()

func codeString(c int) string {
	if s, ok := codeStrings[c]; ok {
		return s
	}
	return "other"
}

func itoa(c int) string {
	return string([]byte{byte('0' + c/100), byte('0' + c/10%10), byte('0' + c%10)})
}
