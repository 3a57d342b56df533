package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	fq "k8s.io/apiserver/pkg/util/flowcontrol/fairqueuing"
	"k8s.io/apiserver/pkg/util/flowcontrol/fairqueuing/eventclock"
	"k8s.io/apiserver/pkg/util/flowcontrol/fairqueuing/queueset"
	fcmetrics "k8s.io/apiserver/pkg/util/flowcontrol/metrics"
	fcrequest "k8s.io/apiserver/pkg/util/flowcontrol/request"
	"k8s.io/utils/clock"

	"github.com/kubedefender/kubedefender/policy"
)

// priorityLevels holds one queue set per non-exempt priority level of the
// running policy. Requests read the current set of levels without a lock;
// prepare builds the next set to the side and its commit swaps it in.
type priorityLevels struct {
	factory fq.QueueSetFactory
	clock   clock.WithDelayedExecution
	maxWait time.Duration
	metrics *metrics

	mu    sync.Mutex // serialises prepare and commit
	state atomic.Pointer[levelsState]
	// all keeps every queue set ever built, by level name, so that a level
	// that comes back after a reload reuses its queue set (and its queued
	// requests are never stranded).
	all map[string]*level
}

type levelsState struct {
	policy *policy.Compiled
	levels map[string]*level // empty: the policy has no priority levels
}

// level is one priority level. A non-exempt level has a queue set; its
// fields other than qs are read-only after the level is published.
type level struct {
	name   string
	exempt bool
	seats  int
	qs     fq.QueueSet
	// gate holds the level's seats and its fast path (see seatGate); it
	// lives as long as qs.
	gate *seatGate
	// wait is the level's child of the queue wait histogram.
	wait prometheus.Observer
}

func newPriorityLevels(clk clock.WithDelayedExecution, maxWait time.Duration, m *metrics) (*priorityLevels, error) {
	if maxWait <= 0 {
		return nil, errors.New("failed to build priority levels: the maximum queue wait must be positive")
	}
	return &priorityLevels{factory: queueset.NewQueueSetFactory(eventClock{clk}), clock: clk, maxWait: maxWait, metrics: m, all: map[string]*level{}}, nil
}

// eventClock gives the queue sets the proxy's clock (they read the time for
// their virtual time and schedule nothing), so one clock drives both the
// queue sets and the queue wait's bound.
type eventClock struct{ clock.WithDelayedExecution }

// EventAfterDuration calls f after d with the time it was due.
func (c eventClock) EventAfterDuration(f eventclock.EventFunc, d time.Duration) {
	due := c.Now().Add(d)
	// f gets the time it was due, not Now: a fake clock runs f under its lock.
	c.AfterFunc(d, func() { f(due) })
}

// EventAfterTime calls f at t.
func (c eventClock) EventAfterTime(f eventclock.EventFunc, t time.Time) {
	c.EventAfterDuration(f, t.Sub(c.Now()))
}

var _ eventclock.Interface = eventClock{}

// seatsFor splits concurrency among the non-exempt levels by shares, as the
// API server does: ceil(concurrency*shares/sum), at least one seat each.
func seatsFor(spec *policy.Spec) map[string]int {
	sum := 0
	for _, l := range spec.PriorityLevels {
		if !l.Exempt {
			sum += shares(l)
		}
	}
	out := map[string]int{}
	for _, l := range spec.PriorityLevels {
		if l.Exempt || sum == 0 {
			continue
		}
		n := (spec.Concurrency*shares(l) + sum - 1) / sum
		out[l.Name] = max(n, 1)
	}
	return out
}

func shares(l policy.PriorityLevel) int {
	if l.Shares <= 0 {
		return policy.DefaultShares
	}
	return l.Shares
}

// prepare builds the levels of c to the side and changes nothing that
// runs: an existing queue set begins a configuration change, a new level
// the construction of a queue set (apiserver's BeginConfigChange and
// BeginConstruction, which only check the configuration). It fails unless
// every level configures. The returned commit completes them and swaps the
// levels in; it cannot fail. An existing queue set keeps its queued and
// executing requests. Prepare and commit are serialised by the caller (the
// policy watcher): no other prepare comes between a prepare and its commit.
func (pl *priorityLevels) prepare(c *policy.Compiled) (commit func(), err error) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	spec := &c.Policy.Spec
	seats := seatsFor(spec)
	var changes []levelChange
	next := map[string]*level{}
	for _, l := range spec.PriorityLevels {
		if l.Exempt {
			next[l.Name] = &level{name: l.Name, exempt: true}
			continue
		}
		qc := fq.QueuingConfig{Name: l.Name, DesiredNumQueues: l.Queues, QueueLengthLimit: l.QueueLengthLimit, HandSize: l.HandSize}
		if qc.DesiredNumQueues == 0 {
			qc.DesiredNumQueues = policy.DefaultQueues
		}
		if qc.HandSize == 0 {
			qc.HandSize = min(policy.DefaultHandSize, qc.DesiredNumQueues)
		}
		if qc.QueueLengthLimit == 0 {
			qc.QueueLengthLimit = policy.DefaultQueueLengthLimit
		}
		dc := fq.DispatchingConfig{ConcurrencyLimit: seats[l.Name], ConcurrencyDenominator: seats[l.Name]}
		var qsc fq.QueueSetCompleter
		old := pl.all[l.Name]
		if old != nil {
			qsc, err = old.qs.BeginConfigChange(qc)
		} else {
			// The gate counts the seats held (executing), not the queue set.
			qsc, err = pl.factory.BeginConstruction(qc, pl.gauges(l.Name), noopGauge{}, noopGauge{})
		}
		if err != nil {
			return nil, fmt.Errorf("failed to configure priority level %q: %w", l.Name, err)
		}
		lvl := &level{name: l.Name, seats: dc.ConcurrencyLimit, wait: pl.metrics.wait.WithLabelValues(l.Name)}
		if old != nil {
			lvl.qs, lvl.gate = old.qs, old.gate
		} else {
			lvl.gate = newSeatGate(0, pl.metrics.executing.WithLabelValues(l.Name), pl.metrics.waiting.WithLabelValues(l.Name))
		}
		next[l.Name] = lvl
		changes = append(changes, levelChange{lvl: lvl, qsc: qsc, dc: dc})
	}
	return func() { pl.commit(&levelsState{policy: c, levels: next}, changes) }, nil
}

// levelChange is one prepared queue set: completed at commit.
type levelChange struct {
	lvl *level
	qsc fq.QueueSetCompleter
	dc  fq.DispatchingConfig
}

// commit completes the prepared queue sets and publishes next.
func (pl *priorityLevels) commit(next *levelsState, changes []levelChange) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for _, ch := range changes {
		ch.lvl.qs = ch.qsc.Complete(ch.dc)
		ch.lvl.gate.setLimit(ch.dc.ConcurrencyLimit)
		pl.all[ch.lvl.name] = ch.lvl
		pl.metrics.seats.WithLabelValues(ch.lvl.name).Set(float64(ch.lvl.seats))
	}
	for name := range pl.all {
		if _, ok := next.levels[name]; !ok {
			// Gone from the policy: its queue set drains the requests it holds
			// and takes no more; a later policy with the name reuses it.
			pl.metrics.seats.WithLabelValues(name).Set(0)
		}
	}
	pl.state.Store(next)
}

func (pl *priorityLevels) gauges(name string) fcmetrics.RatioedGaugePair {
	return fcmetrics.RatioedGaugePair{
		RequestsWaiting:   gaugeFor(pl.metrics.waiting, name),
		RequestsExecuting: noopGauge{},
	}
}

// WithPriorityLevels puts each request through its priority level: the first
// flow schema that matches (by precedence) names the level, the catch-all
// level otherwise. Exempt levels and a policy without levels pass straight
// on. A full queue or a wait longer than the maximum answers 429.
func WithPriorityLevels(pl *priorityLevels, next http.Handler) http.Handler {
	if pl == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := pl.state.Load()
		if len(s.levels) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		st := stateOf(r)
		fsName, levelName, dist := "", policy.CatchAll, ""
		if fs := s.policy.FlowSchemaFor(&st.attrs.Attributes); fs != nil {
			fsName, levelName = fs.Name, fs.PriorityLevel
			if fs.Distinguisher == policy.DistinguisherByNamespace {
				dist = st.attrs.Namespace
			} else {
				dist = st.attrs.User
			}
		} else {
			dist = st.attrs.User
		}
		lvl := s.levels[levelName]
		st.level = levelName
		if lvl == nil || lvl.exempt {
			next.ServeHTTP(w, r)
			return
		}
		pl.serve(w, r, st, lvl, fsName, dist, next)
	})
}

var oneSeat = fcrequest.WorkEstimate{InitialSeats: 1}

// queueWait is the context a request waits for a seat with: the request's
// own, whose Done is armed (the request's end or the maximum wait counted
// from arrival, whichever comes first) only when the request has to wait:
// when the queue set queues it (serve arms it after StartRequest), or when
// the queue set dispatched it at once but the level's seat gate has no free
// seat for it (the gate calls waitDone, which arms it then). A request
// dispatched at once that finds a free seat, the common case, costs no
// timer. The queue set reads Done only when Finish waits for its decision,
// after arm.
type queueWait struct {
	context.Context
	// queued is set by the queue set (under its lock) while the request
	// sits in a queue.
	queued atomic.Bool
	done   chan struct{}
	once   sync.Once
}

// Done is nil (never ready) until arm.
func (q *queueWait) Done() <-chan struct{} { return q.done }

// Err keeps the context contract with Done: nil until Done is closed, then
// the request's error, or DeadlineExceeded for the maximum wait.
func (q *queueWait) Err() error {
	if q.done == nil {
		return nil
	}
	select {
	case <-q.done:
		if err := q.Context.Err(); err != nil {
			return err
		}
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func (q *queueWait) noteQueued(inQueue bool) { q.queued.Store(inQueue) }

func (q *queueWait) expire() { q.once.Do(func() { close(q.done) }) }

// arm makes Done ready when the request's context ends or after wait on
// clk; the returned function disarms it.
func (q *queueWait) arm(clk clock.WithDelayedExecution, wait time.Duration) (disarm func()) {
	q.done = make(chan struct{})
	t := clk.AfterFunc(wait, q.expire)
	stop := context.AfterFunc(q.Context, q.expire)
	return func() {
		t.Stop()
		stop()
	}
}

// seatRequest is one request's passage through a queue set: its wait
// context and, for a request that is not long-running, what its execute
// function needs (one allocation instead of a closure and its variables).
type seatRequest struct {
	queueWait
	pl       *priorityLevels
	lvl      *level
	st       *reqState
	w        http.ResponseWriter
	r        *http.Request
	next     http.Handler
	arrived  time.Time
	executed bool
	// disarm stops the armed wait (nil until arm).
	disarm func()
}

// waitDone is what ends the request's wait for a seat: the armed queue
// wait, armed now if the queue set dispatched the request at once.
func (s *seatRequest) waitDone() <-chan struct{} {
	if s.done == nil {
		s.disarm = s.arm(s.pl.clock, s.pl.maxWait-s.pl.clock.Since(s.arrived))
	}
	return s.done
}

// execute runs the request once the queue set dispatched it and it holds
// a seat of the level's gate.
func (s *seatRequest) execute() {
	if !s.lvl.gate.acquire(s.waitDone) {
		return
	}
	defer s.lvl.gate.release()
	s.executed = true
	s.st.queueWait = s.pl.clock.Since(s.arrived)
	s.lvl.wait.Observe(s.st.queueWait.Seconds())
	s.next.ServeHTTP(s.w, s.r)
}

func (pl *priorityLevels) serve(w http.ResponseWriter, r *http.Request, st *reqState, lvl *level, fsName, dist string, next http.Handler) {
	if lvl.gate.tryFast() {
		serveSeated(w, r, st, lvl, next)
		return
	}
	arrived := pl.clock.Now()
	sr := &seatRequest{queueWait: queueWait{Context: r.Context()}, pl: pl, lvl: lvl, st: st, w: w, r: r, next: next, arrived: arrived}
	lvl.gate.enterQueueSet()
	req, _ := lvl.qs.StartRequest(&sr.queueWait, &oneSeat, flowHash(fsName, dist), dist, fsName, st.info, nil, sr.noteQueued)
	if req == nil {
		lvl.gate.leaveQueueSet()
		pl.reject(w, st, lvl, "queue-full",
			"kubedefender: priority level "+strconv.Quote(lvl.name)+" is full: its queues hold as many requests as they may; retry shortly")
		return
	}
	if sr.queued.Load() {
		// The wait is bounded from arrival, as a deadline set before
		// StartRequest would be.
		sr.disarm = sr.arm(pl.clock, pl.maxWait-pl.clock.Since(arrived))
	}
	defer func() {
		if sr.disarm != nil {
			sr.disarm()
		}
	}()
	if !st.longRunning {
		defer lvl.gate.leaveQueueSet()
		req.Finish(sr.execute)
		if !sr.executed {
			pl.timedOut(w, r, st, lvl, arrived)
		}
		return
	}
	// A long-running request holds its seat only until its response starts:
	// Finish runs in a goroutine whose execute function returns (freeing the
	// seat) when the response starts or the handler returns.
	granted, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer lvl.gate.leaveQueueSet()
		req.Finish(func() {
			if !lvl.gate.acquire(sr.waitDone) {
				return
			}
			defer lvl.gate.release()
			close(granted)
			<-release
		})
	}()
	select {
	case <-granted:
	case <-done:
		pl.timedOut(w, r, st, lvl, arrived)
		return
	}
	st.queueWait = pl.clock.Since(arrived)
	lvl.wait.Observe(st.queueWait.Seconds())
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	st.setOnStart(free)
	defer free()
	next.ServeHTTP(w, r)
}

// serveSeated runs a request that took a seat on the fast path, without
// waiting: until its response starts if it is long-running, else to its end.
func serveSeated(w http.ResponseWriter, r *http.Request, st *reqState, lvl *level, next http.Handler) {
	lvl.wait.Observe(0)
	if !st.longRunning {
		defer lvl.gate.release()
		next.ServeHTTP(w, r)
		return
	}
	var once sync.Once
	free := func() { once.Do(lvl.gate.release) }
	st.setOnStart(free)
	defer free()
	next.ServeHTTP(w, r)
}

func (pl *priorityLevels) timedOut(w http.ResponseWriter, r *http.Request, st *reqState, lvl *level, arrived time.Time) {
	lvl.wait.Observe(pl.clock.Since(arrived).Seconds())
	if r.Context().Err() != nil {
		return // the client went away while queued
	}
	pl.reject(w, st, lvl, "time-out",
		fmt.Sprintf("kubedefender: request waited %s in priority level %q without getting a seat; retry shortly", pl.maxWait, lvl.name))
}

func (pl *priorityLevels) reject(w http.ResponseWriter, st *reqState, lvl *level, reason, msg string) {
	pl.metrics.rejections.WithLabelValues("priorityLevel", lvl.name, reason).Inc()
	writeStatus(w, http.StatusTooManyRequests, "TooManyRequests", msg, time.Second)
}

// flowHash is FNV-1a over the flow schema name and the distinguisher: the
// flow identity shuffle sharding deals a hand for.
func flowHash(fsName, dist string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(fsName); i++ {
		h = (h ^ uint64(fsName[i])) * prime
	}
	h *= prime // a zero byte between the two parts: (h ^ 0) * prime
	for i := 0; i < len(dist); i++ {
		h = (h ^ uint64(dist[i])) * prime
	}
	return h
}

// gauge adapts a Prometheus gauge to the queue set's RatioedGauge; the
// denominator is not needed (seats are their own metric).
type gauge struct{ prometheus.Gauge }

func (gauge) SetDenominator(float64) {}

func gaugeFor(v *prometheus.GaugeVec, name string) fcmetrics.RatioedGauge {
	return gauge{v.WithLabelValues(name)}
}

type noopGauge struct{}

func (noopGauge) Set(float64)            {}
func (noopGauge) Inc()                   {}
func (noopGauge) Dec()                   {}
func (noopGauge) Add(float64)            {}
func (noopGauge) SetToCurrentTime()      {}
func (noopGauge) SetDenominator(float64) {}

// LevelStatus is the load of one priority level, for status.
type LevelStatus struct {
	Name   string
	Exempt bool
	// Seats is the level's share of the concurrency; SeatsInUse are taken by
	// executing requests, Waiting requests are queued.
	Seats, SeatsInUse, Executing, Waiting int
}

// status reports every level of the running policy, in policy order.
func (pl *priorityLevels) status() []LevelStatus {
	st := pl.state.Load()
	if st == nil {
		return nil
	}
	var out []LevelStatus
	for _, l := range st.policy.Policy.Spec.PriorityLevels {
		lvl := st.levels[l.Name]
		if lvl == nil {
			continue
		}
		ls := LevelStatus{Name: lvl.name, Exempt: lvl.exempt, Seats: lvl.seats}
		if lvl.qs != nil {
			// The gate holds the seats (one a request) and the requests the
			// queue set dispatched that wait for one; the queue set the rest.
			inUse, waiting := lvl.gate.load()
			d := lvl.qs.Dump(false)
			ls.SeatsInUse, ls.Executing, ls.Waiting = inUse, inUse, d.Waiting+waiting
		}
		out = append(out, ls)
	}
	return out
}
