package proxy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/internal/testwait"
)

// TestAFloodingFlowDoesNotStarveAnotherFlowAtItsLevel counts dispatches on a
// fake clock, not time: with a flooder's backlog queued at a one-seat level,
// a request of another flow (another user: the distinguisher) is dispatched
// within a few of the flooder's requests, not after its whole backlog as a
// single FIFO queue would serve it.
func TestAFloodingFlowDoesNotStarveAnotherFlowAtItsLevel(t *testing.T) {
	// Given a one-seat level whose upstream holds every request until
	// released, each served for 5ms of the fake clock
	const backlog = 15
	clk := clocktesting.NewFakeClock(time.Now())
	pol := strings.Replace(basePolicy, "queues: 4, handSize: 2, queueLengthLimit: 2", "queues: 64, handSize: 2, queueLengthLimit: 50", 1)
	arrivals, release := make(chan string, backlog+2), make(chan struct{})
	e := newEnv(t, envOptions{policy: pol, clock: clk, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrivals <- r.Header.Get("X-Remote-User")
		<-release
	})})
	done := make(chan error, backlog+2)
	send := func(c *http.Client) {
		req, _ := http.NewRequest(http.MethodGet, e.proxyURL+"/api/v1/pods", nil)
		req.Header.Set("User-Agent", "slow/1")
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}
	steady, flooder := e.client(e.userCert(t, "steady"), false), e.client(e.userCert(t, "flooder"), false)
	// When the flooder holds the seat with a backlog queued behind it
	for range backlog + 1 {
		go send(flooder)
	}
	if who := <-arrivals; who != "flooder" {
		t.Fatalf("the first request upstream came from %q", who)
	}
	testwait.Until(t, "the flooder's backlog is queued", func() bool { return e.queued("workload") == backlog })
	// And the steady flow sends one request
	go send(steady)
	testwait.Until(t, "the steady request is queued", func() bool { return e.queued("workload") == backlog+1 })
	// Then it is among the next few requests the seat serves
	dispatches := 0
	for {
		clk.Step(5 * time.Millisecond)
		release <- struct{}{}
		dispatches++
		if who := <-arrivals; who == "steady" {
			break
		}
		if dispatches > backlog {
			t.Fatal("the steady request was never dispatched")
		}
	}
	close(release)
	for range backlog + 2 {
		if err := <-done; err != nil {
			t.Errorf("request: %v", err)
		}
	}
	t.Logf("the steady request was dispatched %d requests after it queued, behind a backlog of %d", dispatches, backlog)
	if dispatches > 3 {
		t.Errorf("the steady request waited for %d of the flooder's %d queued requests, want at most 2 (one per queue of the flooder's hand)", dispatches-1, backlog)
	}
}
