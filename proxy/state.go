package proxy

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apiserver/pkg/authentication/user"
	apirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/utils/clock"

	"github.com/kubedefender/kubedefender/limiter"
)

// reqState is what the filters learn about one request, shared through its
// context. One is allocated per request, by WithRequestState, together with
// the request's responseWriter. It is not pooled: a request's context, and
// the state in it, may be held by what the request started (a hijacked
// connection's copies, a transport's goroutines) after the chain returns.
type reqState struct {
	start time.Time
	user  user.Info
	// forwardIdentity: send X-Remote-* upstream over the front-proxy connection.
	forwardIdentity bool
	info            *apirequest.RequestInfo
	attrs           limiter.Attributes
	// deleteOptions of a delete or deletecollection: dry run and
	// propagationPolicy as the API server reads them.
	deleteOptions deleteOptions
	// applyPatch: a server-side apply PATCH, which creates a missing object.
	applyPatch  bool
	longRunning bool
	level       string
	queueWait   time.Duration
	// upstream round trip, until response headers (set by the transport wrapper).
	upstream time.Duration

	mu        sync.Mutex
	onStart   func() // called once when the response starts
	started   bool
	startedAt time.Time

	// rw is the request's responseWriter, allocated with the state.
	rw responseWriter
}

type stateKey struct{}

// stateOf returns the request's state, which WithRequestState put in its
// context. A request without one reached a filter mounted outside
// WithRequestState: a chain built in the wrong order, whose filters would
// each see a different request. That is reported (missingState) and the
// filter goes on with a fresh state of its own.
func stateOf(r *http.Request) *reqState {
	if st, ok := r.Context().Value(stateKey{}).(*reqState); ok {
		return st
	}
	return missingState()
}

var (
	// missingStates counts the requests stateOf found without a state; the
	// proxies of the process export it (kubedefender_proxy_missing_request_state_total).
	missingStates    atomic.Int64
	missingStateOnce sync.Once
	// panicOnMissingState turns a missing state into a panic; the package's
	// tests set it, so that a chain built in the wrong order fails them.
	panicOnMissingState bool
)

// missingState reports a request without a state: counted, logged once (the
// filters have no logger of their own, so on the default logger), a panic
// under the package's tests. It returns a fresh state.
func missingState() *reqState {
	missingStates.Add(1)
	missingStateOnce.Do(func() {
		slog.Error("kubedefender proxy: a filter ran outside WithRequestState; filters do not share what they learn about a request (a bug in how the chain is built)")
	})
	if panicOnMissingState {
		panic("proxy: a filter ran outside WithRequestState")
	}
	return &reqState{}
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

// WithRequestState gives each request the state the filters after it share
// (who the client is, what the request is, its level and timings) and wraps
// the response writer to record the response's status and start. It is the
// outermost filter of the chain: a filter outside it would see no state.
func WithRequestState(clk clock.PassiveClock, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := &reqState{start: clk.Now()}
		st.rw = responseWriter{ResponseWriter: w, st: st, clock: clk}
		next.ServeHTTP(&st.rw, withState(r, st))
	})
}

// WithInstrumentation counts every answer by verb and code and observes the
// latency the proxy adds: the time to the response's start, less the queue
// wait (a deliberate delay, measured on its own) and the upstream's own time.
// It reads the request's state once the filters after it have returned, so it
// may sit anywhere after WithRequestState; outermost, it also counts the
// proxy's own rejections.
func WithInstrumentation(m *metrics, next http.Handler) http.Handler {
	counters := newRequestCounters(m.requests)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r)
		st := stateOf(r)
		code := st.rw.code
		if code == 0 {
			// Nothing written: the client went away or the handler aborted.
			code = 499
		}
		verb := verbUnknown
		if st.info != nil {
			verb = boundedVerb(st.info.Verb)
		}
		counters.get(verb, code).Inc()
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

// verbs are the bounded values of the verb label: the Kubernetes verbs and
// HTTP methods (lowercase) RequestInfoFactory reports, "other" for any
// other, and "unknown" before the verb is known.
var verbs = [...]string{
	"get", "list", "watch", "create", "update", "patch", "delete",
	"deletecollection", "proxy", "head", "post", "put", "options", "connect",
	"other", "unknown",
}

const (
	verbOther   = len(verbs) - 2
	verbUnknown = len(verbs) - 1
)

// boundedVerb returns v's index in verbs, verbOther if it has none.
func boundedVerb(v string) int {
	for i, known := range verbs[:verbOther] {
		if v == known {
			return i
		}
	}
	return verbOther
}

// codeLabels are the values of the code label: 100 to 599 and "other".
const minCode, maxCode = 100, 599

// requestCounters resolves requests_total's children once each, on first
// use, instead of hashing the labels on every request.
type requestCounters struct {
	vec *prometheus.CounterVec
	// byCode[verb][code-minCode], and byCode[verb][maxCode-minCode+1] for
	// codes out of range.
	byCode [len(verbs)][maxCode - minCode + 2]atomic.Pointer[prometheus.Counter]
}

func newRequestCounters(vec *prometheus.CounterVec) *requestCounters {
	return &requestCounters{vec: vec}
}

func (c *requestCounters) get(verb, code int) prometheus.Counter {
	i := maxCode - minCode + 1
	if code >= minCode && code <= maxCode {
		i = code - minCode
	}
	slot := &c.byCode[verb][i]
	if p := slot.Load(); p != nil {
		return *p
	}
	counter := c.vec.WithLabelValues(verbs[verb], codeString(code))
	slot.Store(&counter)
	return counter
}

func codeString(c int) string {
	if c < minCode || c > maxCode {
		return "other"
	}
	return strconv.Itoa(c)
}
