package proxy

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kubedefender/kubedefender/internal/testwait"
)

func testGate(limit int) (*seatGate, prometheus.Gauge, prometheus.Gauge) {
	executing := prometheus.NewGauge(prometheus.GaugeOpts{Name: "executing"})
	waiting := prometheus.NewGauge(prometheus.GaugeOpts{Name: "waiting"})
	return newSeatGate(limit, executing, waiting), executing, waiting
}

func never() <-chan struct{} { return nil }

func TestSeatGate(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, g *seatGate, executing, waiting prometheus.Gauge)
	}{
		{name: "free seats are taken at once while nothing is in the queue set, and no more than the limit", run: func(t *testing.T, g *seatGate, executing, _ prometheus.Gauge) {
			for i := range 2 {
				if !g.tryFast() {
					t.Fatalf("seat %d of 2 refused", i+1)
				}
			}
			if g.tryFast() {
				t.Fatal("a third seat of two was given")
			}
			if got := testutil.ToFloat64(executing); got != 2 {
				t.Errorf("executing = %v, want 2", got)
			}
			g.release()
			if !g.tryFast() {
				t.Error("a released seat was not given again")
			}
		}},
		{name: "the fast path is closed while a request is in the queue set", run: func(t *testing.T, g *seatGate, _, _ prometheus.Gauge) {
			g.enterQueueSet()
			if g.tryFast() {
				t.Fatal("the fast path took a seat beside the queue set")
			}
			g.leaveQueueSet()
			if !g.tryFast() {
				t.Error("the fast path stayed closed once the queue set held nothing")
			}
		}},
		{name: "a request the queue set dispatched waits for a seat the fast path holds and gets it when released", run: func(t *testing.T, g *seatGate, executing, waiting prometheus.Gauge) {
			g.tryFast()
			g.tryFast()
			got := make(chan bool)
			go func() { got <- g.acquire(never) }()
			testwait.Until(t, "the request waiting", func() bool { _, w := g.load(); return w == 1 })
			if w := testutil.ToFloat64(waiting); w != 1 {
				t.Errorf("waiting = %v, want 1", w)
			}
			g.release()
			if !<-got {
				t.Fatal("the waiting request got no seat")
			}
			if inUse, w := g.load(); inUse != 2 || w != 0 {
				t.Errorf("in use %d, waiting %d: want 2 and 0", inUse, w)
			}
			if e, w := testutil.ToFloat64(executing), testutil.ToFloat64(waiting); e != 2 || w != 0 {
				t.Errorf("executing = %v, waiting = %v: want 2 and 0", e, w)
			}
		}},
		{name: "a waiting request whose wait ends leaves its place and holds nothing", run: func(t *testing.T, g *seatGate, _, waiting prometheus.Gauge) {
			g.tryFast()
			g.tryFast()
			done := make(chan struct{})
			got := make(chan bool)
			go func() { got <- g.acquire(func() <-chan struct{} { return done }) }()
			testwait.Until(t, "the request waiting", func() bool { _, w := g.load(); return w == 1 })
			close(done)
			if <-got {
				t.Fatal("a request whose wait ended got a seat no one freed")
			}
			if inUse, w := g.load(); inUse != 2 || w != 0 {
				t.Errorf("in use %d, waiting %d: want 2 and 0", inUse, w)
			}
			if w := testutil.ToFloat64(waiting); w != 0 {
				t.Errorf("waiting = %v, want 0", w)
			}
		}},
		{name: "waiting requests get their seats in the order they came", run: func(t *testing.T, g *seatGate, _, _ prometheus.Gauge) {
			g.tryFast()
			g.tryFast()
			order := make(chan int, 2)
			for i := range 2 {
				go func() {
					g.acquire(never)
					order <- i
				}()
				testwait.Until(t, "the request waiting", func() bool { _, w := g.load(); return w == i+1 })
			}
			g.release()
			if first := <-order; first != 0 {
				t.Errorf("request %d got the first freed seat, want 0", first)
			}
			g.release()
			<-order
		}},
		{name: "a larger limit lets waiting requests in and a smaller one keeps the seats held", run: func(t *testing.T, g *seatGate, executing, _ prometheus.Gauge) {
			g.tryFast()
			g.tryFast()
			got := make(chan bool)
			go func() { got <- g.acquire(never) }()
			testwait.Until(t, "the request waiting", func() bool { _, w := g.load(); return w == 1 })
			g.setLimit(3)
			if !<-got {
				t.Fatal("no seat from the larger limit")
			}
			g.setLimit(1)
			if inUse, _ := g.load(); inUse != 3 {
				t.Errorf("in use %d after the limit shrank, want the 3 held", inUse)
			}
			if g.tryFast() {
				t.Error("a seat was given beyond the smaller limit")
			}
			g.release()
			g.release()
			if e := testutil.ToFloat64(executing); e != 1 {
				t.Errorf("executing = %v, want 1", e)
			}
			if g.tryFast() {
				t.Error("a seat was given beyond the smaller limit")
			}
			g.release()
			if !g.tryFast() {
				t.Error("no seat once the held ones fell below the smaller limit")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, executing, waiting := testGate(2)
			tc.run(t, g, executing, waiting)
		})
	}
}

// TestSeatGateNeverHoldsMoreSeatsThanItsLimit runs requests that take the
// fast path or come from a queue set (which dispatches at most limit at a
// time) at random, and counts those holding a seat at once.
func TestSeatGateNeverHoldsMoreSeatsThanItsLimit(t *testing.T) {
	const limit, workers, rounds = 3, 8, 2000
	g, executing, waiting := testGate(limit)
	queueSet := make(chan struct{}, limit) // the queue set's own concurrency limit
	var held, peak atomic.Int64
	hold := func() {
		n := held.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		runtime.Gosched()
		held.Add(-1)
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range rounds {
				if rng.IntN(2) == 0 && g.tryFast() {
					hold()
					g.release()
					continue
				}
				g.enterQueueSet()
				queueSet <- struct{}{}
				if g.acquire(never) {
					hold()
					g.release()
				}
				<-queueSet
				g.leaveQueueSet()
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > limit {
		t.Errorf("%d requests held a seat at once, limit %d", p, limit)
	}
	if inUse, w := g.load(); inUse != 0 || w != 0 {
		t.Errorf("in use %d, waiting %d after every request ended", inUse, w)
	}
	if e, w := testutil.ToFloat64(executing), testutil.ToFloat64(waiting); e != 0 || w != 0 {
		t.Errorf("executing = %v, waiting = %v after every request ended", e, w)
	}
}
