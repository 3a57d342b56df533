package proxy

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// seatGate counts the seats of one priority level that executing requests
// hold, and gives the level a fast path: while none of its requests is in
// its queue set (none waits there, none was dispatched by it) and a seat is
// free, a request takes the seat here at once and never enters the queue
// set. That is what the queue set would do with it too (an idle queue set
// dispatches a request as it arrives), without the queue set's work on
// every request: shuffle sharding, virtual time, its request and promise,
// and the arguments it builds for its disabled log lines (about 20 of the
// 25 allocations a request made in it).
//
// Once a request finds no free seat, it and every later one go through the
// queue set, which queues, rejects and dispatches them fairly as before, so
// contention is judged by the queue set alone; the fast path opens again
// once the queue set holds nothing. The queue set does not know the seats
// the fast path took, so a request it dispatches still takes its seat here
// (acquire), waiting, in the order the queue set dispatched them, for the
// fast path's requests to finish; that wait counts as queue wait and is
// bounded the same way. The seats held never exceed the level's limit.
//
// The gate of a level lives as long as its queue set (reloads keep both).
type seatGate struct {
	mu    sync.Mutex
	limit int // the level's seats, its queue set's concurrency limit
	inUse int // seats held by executing requests, whichever way they came
	// inQueueSet counts requests between their StartRequest and the end of
	// their Finish: while it is not zero the fast path is closed.
	inQueueSet int
	// waiters are the requests the queue set dispatched that wait for a
	// seat held by the fast path, first dispatched first.
	waiters []chan struct{}

	executing prometheus.Gauge // seats held
	waiting   prometheus.Gauge // waiters (the queue set counts its own)
}

func newSeatGate(limit int, executing, waiting prometheus.Gauge) *seatGate {
	return &seatGate{limit: limit, executing: executing, waiting: waiting}
}

// tryFast takes a seat for a request that need not queue: nothing of the
// level is in its queue set and a seat is free. The caller must release it.
func (g *seatGate) tryFast() bool {
	g.mu.Lock()
	if g.inQueueSet > 0 || g.inUse >= g.limit {
		g.mu.Unlock()
		return false
	}
	g.inUse++
	g.mu.Unlock()
	g.executing.Inc()
	return true
}

// enterQueueSet closes the fast path until leaveQueueSet, called once for
// each enterQueueSet when the request's Finish has returned (or the queue
// set rejected it).
func (g *seatGate) enterQueueSet() {
	g.mu.Lock()
	g.inQueueSet++
	g.mu.Unlock()
}

func (g *seatGate) leaveQueueSet() {
	g.mu.Lock()
	g.inQueueSet--
	g.mu.Unlock()
}

// acquire takes a seat for a request the queue set dispatched, waiting
// behind earlier ones until a seat is free or the channel done returns is
// closed (done is called only if the request must wait). It reports whether
// the request holds a seat (then it must release it).
func (g *seatGate) acquire(done func() <-chan struct{}) bool {
	g.mu.Lock()
	if g.inUse < g.limit && len(g.waiters) == 0 {
		g.inUse++
		g.mu.Unlock()
		g.executing.Inc()
		return true
	}
	ch := make(chan struct{})
	g.waiters = append(g.waiters, ch)
	g.mu.Unlock()
	g.waiting.Inc()
	defer g.waiting.Dec()
	select {
	case <-ch:
		return true // release handed its seat over
	case <-done():
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, w := range g.waiters {
		if w == ch {
			g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
			return false
		}
	}
	return true // handed over as done closed: the seat is the request's
}

// release frees a seat taken by tryFast or acquire, handing it to the first
// waiter if the limit allows.
func (g *seatGate) release() {
	g.mu.Lock()
	if len(g.waiters) > 0 && g.inUse <= g.limit {
		ch := g.waiters[0]
		g.waiters = g.waiters[1:]
		g.mu.Unlock()
		close(ch) // the seat passes on: inUse and the gauge stay
		return
	}
	g.inUse--
	g.mu.Unlock()
	g.executing.Dec()
}

// setLimit changes the level's seats (a reload); waiters get the seats a
// larger limit frees. Seats held beyond a smaller limit are kept until
// released, as the queue set keeps its executing requests.
func (g *seatGate) setLimit(n int) {
	g.mu.Lock()
	g.limit = n
	var woken []chan struct{}
	for len(g.waiters) > 0 && g.inUse < g.limit {
		woken = append(woken, g.waiters[0])
		g.waiters = g.waiters[1:]
		g.inUse++
	}
	g.mu.Unlock()
	for _, ch := range woken {
		g.executing.Inc()
		close(ch)
	}
}

// load reports the seats held and the requests waiting here for one.
func (g *seatGate) load() (inUse, waiting int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inUse, len(g.waiters)
}
