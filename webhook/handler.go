package webhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// Path is where the webhook serves AdmissionReviews.
const Path = "/validate"

// Defaults of Config.
const (
	// DefaultDecisionTimeout bounds one decision, well under the API server's
	// timeoutSeconds (BuildConfiguration's default is 5s).
	DefaultDecisionTimeout = 500 * time.Millisecond
	// DefaultMaxBodyBytes caps a request body. The API server admits objects
	// of up to 3 MiB and an AdmissionReview may carry the object and the old
	// object, plus their envelope: 7 MiB leaves room for both.
	DefaultMaxBodyBytes = 7 << 20
)

// Engine decides requests; *limiter.Engine is one.
type Engine interface {
	// Decide judges one request; it is called once per judged
	// AdmissionReview with a context whose deadline is within the
	// webhook's decision budget.
	Decide(ctx context.Context, a *limiter.Attributes) limiter.Decision
	// Policy returns the running policy; the webhook reads its
	// breakGlass.namespace when Config.Namespace is empty.
	Policy() *policy.Compiled
}

var _ Engine = (*limiter.Engine)(nil)

// Config configures a Handler.
type Config struct {
	// Engine judges requests; required.
	Engine Engine
	// Namespace is where KubeDefender runs: objects inside it are exempt.
	// Empty means the running policy's breakGlass.namespace.
	Namespace string
	// DecisionTimeout is the most one decision may take; when it passes the
	// request is admitted with a warning. Zero means DefaultDecisionTimeout.
	DecisionTimeout time.Duration
	// MaxBodyBytes caps a request body; zero means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Logger receives bad requests, timeouts, panics and shadow hits; nil
	// discards.
	Logger *slog.Logger
	// Registerer takes the webhook metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Cascades counts what root requests remove, for budgets with cascades:
	// AtRoot; nil judges every budget PerObject.
	Cascades Cascades
	// Resolve maps a resource an AtRoot budget names to the version the
	// counter watches, for namespace deletes; nil counts pods only.
	Resolve func(schema.GroupResource) (schema.GroupVersionResource, bool)
	// Clock times the decision timeout, the request duration metric and the
	// charge-once memory; nil is real time. (The store's deadline within a
	// decision is a context deadline, in real time.)
	Clock clock.Clock
}

// Handler serves POST /validate (AdmissionReview admission.k8s.io/v1) and
// GET /healthz. It is safe for concurrent use.
type Handler struct {
	engine    Engine
	namespace string
	timeout   time.Duration
	maxBody   int64
	log       *slog.Logger
	metrics   *metrics
	memo      *chargeMemo
	bodies    sync.Pool // *[]byte
	deciders  *deciders
	chain     http.Handler
	cascades  Cascades
	resolve   func(schema.GroupResource) (schema.GroupVersionResource, bool)
	clock     clock.Clock
	// notSyncedLogged is set once the webhook has said that AtRoot budgets
	// judge as PerObject until the counter syncs.
	notSyncedLogged atomic.Bool
}

// Repeated validations of one delete are recognised for this long (longer
// than the API server's 60s request timeout), for up to this many objects.
const (
	memoTTL = 2 * time.Minute
	memoMax = 200_000
)

// maxPooledBody is the largest body buffer kept for reuse.
const maxPooledBody = 64 << 10

// NewHandler builds the webhook's HTTP handler.
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.Engine == nil {
		return nil, errors.New("failed to build webhook handler: no engine")
	}
	if cfg.DecisionTimeout <= 0 {
		cfg.DecisionTimeout = DefaultDecisionTimeout
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	h := &Handler{
		engine:    cfg.Engine,
		namespace: cfg.Namespace,
		timeout:   cfg.DecisionTimeout,
		maxBody:   cfg.MaxBodyBytes,
		log:       cfg.Logger,
		metrics:   newMetrics(),
		memo:      newChargeMemo(memoTTL, memoMax),
		cascades:  cfg.Cascades,
		resolve:   cfg.Resolve,
		clock:     cfg.Clock,
		deciders:  newDeciders(),
	}
	h.bodies.New = func() any { b := make([]byte, 0, 16<<10); return &b }
	if cfg.Registerer != nil {
		if err := h.metrics.register(cfg.Registerer); err != nil {
			return nil, err
		}
	}
	mux := http.NewServeMux()
	// The order, outermost first: a panic anywhere becomes a 500 rather than
	// a dropped connection; then the content type and the body cap are
	// checked before a byte of the body is read; then the review is judged
	// (which recovers its own panics into an answer with the request's UID).
	mux.Handle("POST "+Path,
		withRecovery(h.recovered,
			withContentType(h.rejected,
				withBodyLimit(cfg.MaxBodyBytes, h.rejected,
					http.HandlerFunc(h.serveReview)))))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	h.chain = mux
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.chain.ServeHTTP(w, r) }

// rejected counts and logs a request refused before it was decoded.
func (h *Handler) rejected(r *http.Request, code int, msg string) {
	h.metrics.count("", ResultBadRequest)
	h.log.Warn("admission request refused", "code", code, "remote", r.RemoteAddr, "err", msg)
}

// recovered counts and logs a panic that escaped serveReview.
func (h *Handler) recovered(r *http.Request, p any) {
	h.metrics.count("", ResultError)
	h.log.Error("panic serving admission request", "remote", r.RemoteAddr, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
}

func (h *Handler) serveReview(w http.ResponseWriter, r *http.Request) {
	bp := h.bodies.Get().(*[]byte)
	body, err := readBody(r, (*bp)[:0])
	if cap(body) <= maxPooledBody {
		// Only ordinary bodies go back: one huge review must not pin its buffer.
		*bp = body[:0]
		defer h.bodies.Put(bp)
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			msg := fmt.Sprintf("failed to read AdmissionReview: the body exceeds %d bytes", tooBig.Limit)
			h.rejected(r, http.StatusRequestEntityTooLarge, msg)
			http.Error(w, msg, http.StatusRequestEntityTooLarge)
			return
		}
		msg := "failed to read AdmissionReview: " + err.Error()
		h.rejected(r, http.StatusBadRequest, msg)
		http.Error(w, msg, http.StatusBadRequest)
		return
	}
	start := h.clock.Now()
	req, err := decodeReview(body)
	if err != nil {
		h.rejected(r, http.StatusBadRequest, err.Error())
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	op := opLabel(string(req.Operation))
	resp, result := h.review(r.Context(), req)
	// The answer is written into the body's buffer: nothing decoded refers
	// to it.
	out, ok := appendResponse(body[:0], resp)
	if !ok {
		out, err = encodeResponse(resp)
	}
	if err != nil {
		h.metrics.count(op, ResultError)
		h.log.Error("failed to answer admission request", "uid", req.UID, "err", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
	h.metrics.count(op, result)
	h.metrics.observe(op, h.clock.Since(start).Seconds())
}

// bodyChunk is the least a body buffer grows by.
const bodyChunk = 16 << 10

// readBody appends the request body to buf, growing buf only as data
// arrives: by a quarter of what it holds, at least bodyChunk, and never past
// the declared Content-Length (+1, to see the end). A declared length is a
// bound, never an allocation: a caller that declares 7 MiB and sends one
// byte holds the pooled buffer it started with (maxPooledBody at most), so
// the memory a connection pins is what it sent (plus a quarter and a chunk)
// until the server's read timeout (readTimeout) cuts it. Nothing decoded
// keeps a reference to buf.
func readBody(r *http.Request, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			grow := max(len(buf)/4, bodyChunk)
			if cl := r.ContentLength; cl > 0 && int64(len(buf)) < cl {
				grow = int(min(int64(grow), cl-int64(len(buf))+1))
			}
			nb := make([]byte, len(buf), len(buf)+grow)
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// review judges one decoded request. A panic while judging becomes a denial
// with status 500 that carries the request's UID, so the API server gets an
// answer it can match (and the bug is logged with its stack).
func (h *Handler) review(ctx context.Context, req *request) (resp *admissionv1.AdmissionResponse, result string) {
	defer func() {
		if p := recover(); p != nil {
			h.log.Error("panic judging admission request", "uid", req.UID, "operation", req.Operation,
				"resource", req.Resource.Resource, "namespace", req.Namespace, "name", req.Name,
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			resp = &admissionv1.AdmissionResponse{UID: req.UID, Allowed: false, Result: &metav1.Status{
				Status: metav1.StatusFailure, Code: http.StatusInternalServerError, Reason: metav1.StatusReasonInternalError,
				Message: "kubedefender: internal error while judging this request (logged with uid " + string(req.UID) + "); it was not admitted",
			}}
			result = ResultError
		}
	}()
	a, ok := toAttributes(req)
	if !ok {
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}, ResultIgnored
	}
	ns := h.namespace
	if ns == "" {
		ns = h.engine.Policy().Policy.Spec.BreakGlass.Namespace
	}
	if why := policy.Exemption(&a.Attributes, ns); why != "" {
		if h.debugging() {
			h.log.Debug("admission request exempt", "uid", req.UID, "verb", a.Verb, "resource", a.Resource, "namespace", a.Namespace, "name", a.Name, "why", why)
		}
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}, ResultExempt
	}
	objUID := req.OldObject.Metadata.UID
	if a.Verb == "delete" && req.OldObject.Metadata.DeletionTimestamp != "" && !a.DryRun {
		// The object's deletion began earlier (a graceful delete, finalizers):
		// that request was the one judged and charged. The kubelet's final
		// DELETE can come long after, past any charge-once memory.
		if h.debugging() {
			h.log.Debug("delete of an object already being deleted", "uid", req.UID, "object", objUID, "namespace", a.Namespace, "name", a.Name)
		}
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}, ResultRepeat
	}
	// once is set for a delete that can be charged once: the object it
	// removes, by UID and by where it lives.
	var once *chargeKey
	if a.Verb == "delete" && objUID != "" && !a.DryRun {
		once = &chargeKey{UID: objUID, Group: a.APIGroup, Resource: a.Resource, Namespace: a.Namespace, Name: a.Name}
	}
	if once != nil && h.memo.charged(*once, h.clock.Now()) {
		if h.debugging() {
			h.log.Debug("repeated validation of a delete already charged", "uid", req.UID, "object", objUID, "namespace", a.Namespace, "name", a.Name)
		}
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}, ResultRepeat
	}
	switch {
	case a.DryRun:
	case once != nil:
		// The memo catches repeats on this replica; the store catches those
		// that reach another replica sharing it. The store records the key
		// only when the batch was admitted and charged.
		a.ChargeOnce = once.onceKey()
	case a.Verb == "evict":
		// An eviction a PodDisruptionBudget refuses is retried (kubectl drain
		// every 5s) and reaches admission each time: one pod's eviction is
		// charged once per charge-once period. The review does not carry the
		// pod's UID; an Eviction conditioned on one (deleteOptions.
		// preconditions.uid, enforced by the API server) is keyed on it, so a
		// pod recreated under the same name is a new eviction.
		a.ChargeOnce = evictOnceKey(a.Namespace, a.Name, req.Object.podUID())
	}
	roots := h.classify(req, a)
	began := h.clock.Now()
	d, ok := h.decide(ctx, a, h.timeout)
	if ok && d.Repeat && a.Verb == "evict" {
		// The charge-once key of an eviction without a UID names a pod, not
		// that pod's incarnation: a StatefulSet pod recreated under the name
		// of a pod evicted within the charge-once period is a repeat. A repeat
		// is not charged, but it still meets the breakers: an open breaker
		// stops every eviction it covers, repeats included (a drain retrying
		// past a PodDisruptionBudget waits for the breaker like any other).
		// Both decisions share the one decision timeout.
		switch bd, bok := h.decide(ctx, breakersOf(a), h.timeout-h.clock.Since(began)); {
		case !bok:
			ok = false
		case !bd.Allowed:
			d = bd
		}
	}
	if len(roots) > 0 && !a.DryRun && (!ok || d.Allowed) {
		// An admitted root (even one admitted unjudged after a timeout: it
		// will run) makes its follow-ups free, so that no cascade is stopped
		// halfway.
		h.record(roots)
	}
	if !ok {
		// Nothing is remembered: the engine's late answer may still charge
		// (and its store then records the charge-once key), but the memo
		// holds only charges the engine confirmed, so that nothing else (a
		// review that happened to time out) can make a later delete free.
		h.log.Error("decision timed out; the request is admitted unjudged", "uid", req.UID, "timeout", h.timeout,
			"verb", a.Verb, "resource", a.Resource, "namespace", a.Namespace, "name", a.Name, "user", a.User)
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true, Warnings: []string{
			fmt.Sprintf("kubedefender could not judge this request within %s; it was admitted without being charged", h.timeout),
		}}, ResultTimeout
	}
	if once != nil && d.Charged {
		h.memo.remember(*once, h.clock.Now())
	}
	if d.Repeat {
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}, ResultRepeat
	}
	if h.debugging() {
		h.log.Debug("admission request judged", "uid", req.UID, "verb", a.Verb, "resource", a.Resource, "namespace", a.Namespace,
			"name", a.Name, "user", a.User, "dryRun", a.DryRun, "allowed", d.Allowed, "rule", d.Rule)
	}
	return h.answer(req, a, &d)
}

// answer turns a decision into the AdmissionResponse.
func (h *Handler) answer(req *request, a *limiter.Attributes, d *limiter.Decision) (*admissionv1.AdmissionResponse, string) {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: d.Allowed, Warnings: d.Warnings}
	if d.Allowed {
		if len(d.Warnings) == 0 {
			if a.FollowUp && !d.Charged {
				// A follow-up of a charged root that AtRoot budgets let through free.
				return resp, ResultCascade
			}
			return resp, ResultAllowed
		}
		h.log.Info("shadow budget would have denied", "uid", req.UID, "verb", a.Verb, "resource", a.Resource,
			"namespace", a.Namespace, "name", a.Name, "user", a.User, "warnings", len(d.Warnings))
		resp.AuditAnnotations = map[string]string{"shadow": "would-deny"}
		return resp, ResultShadow
	}
	st := &metav1.Status{
		Status:  metav1.StatusFailure,
		Code:    int32(d.Code),
		Reason:  metav1.StatusReason(d.Reason),
		Message: d.Message,
	}
	if d.RetryAfter > 0 {
		// The API server turns this into a Retry-After header.
		st.Details = &metav1.StatusDetails{RetryAfterSeconds: int32(min(math.Ceil(d.RetryAfter.Seconds()), math.MaxInt32))}
	}
	resp.Result = st
	resp.AuditAnnotations = map[string]string{"rule": d.Rule, "decision": "denied"}
	if d.Key != "" {
		resp.AuditAnnotations["key"] = d.Key
	}
	return resp, ResultDenied
}

// evictOnceKey is the charge-once key of a pod's eviction: by namespace and
// name, and by the pod's UID when the Eviction is conditioned on one.
func evictOnceKey(namespace, name string, podUID types.UID) string {
	k := "evict/" + namespace + "/" + name
	if podUID != "" {
		k += "/" + string(podUID)
	}
	return k
}

// breakersOf is a copy of a that only meets the breakers, charging nothing
// (limiter.CheckBreakers).
func breakersOf(a *limiter.Attributes) *limiter.Attributes {
	b := *a
	b.Checks, b.ChargeOnce = limiter.CheckBreakers, ""
	return &b
}

type decided struct {
	d     limiter.Decision
	panic any
}

// decide asks the engine with a deadline. ok is false when the engine did not
// answer within timeout; its late answer is dropped (tokens it took stay
// taken). The store gets four fifths of timeout; the rest is for the engine
// to apply onStoreFailure after a store timeout and for the answer.
func (h *Handler) decide(parent context.Context, a *limiter.Attributes, timeout time.Duration) (d limiter.Decision, ok bool) {
	if timeout <= 0 {
		return limiter.Decision{}, false
	}
	done := make(chan decided, 1)
	h.deciders.start(&decideJob{engine: h.engine, ctx: newLazyDeadline(parent, time.Now().Add(timeout*4/5)), a: a, done: done})
	t := h.clock.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-done:
		if r.panic != nil {
			panic(r.panic)
		}
		return r.d, true
	case <-t.C():
		return limiter.Decision{}, false
	}
}

// debugging says whether debug lines are written: their arguments are built
// (and allocate) only then.
func (h *Handler) debugging() bool { return h.log.Enabled(context.Background(), slog.LevelDebug) }
