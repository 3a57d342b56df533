package proxy

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAFloodingFlowDoesNotStarveAnotherFlowAtItsLevel(t *testing.T) {
	// Given a one-seat level and an upstream that takes 5ms per request
	pol := strings.Replace(basePolicy, "queues: 4, handSize: 2, queueLengthLimit: 2", "queues: 64, handSize: 2, queueLengthLimit: 50", 1)
	e := newEnv(t, envOptions{policy: pol, maxWait: 10 * time.Second, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * time.Millisecond)
	})})
	steady, flooder := e.client(e.userCert(t, "steady"), false), e.client(e.userCert(t, "flooder"), false)
	get := func(c *http.Client, ctx context.Context) (time.Duration, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.proxyURL+"/api/v1/pods", nil)
		req.Header.Set("User-Agent", "slow/1")
		began := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(began), nil
	}
	p99 := func() time.Duration {
		var lat []time.Duration
		for range 50 {
			d, err := get(steady, context.Background())
			if err != nil {
				t.Fatalf("steady: %v", err)
			}
			lat = append(lat, d)
		}
		slices.Sort(lat)
		return lat[len(lat)*99/100]
	}
	alone := p99()
	// When the flooder keeps 16 requests outstanding
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for ctx.Err() == nil {
				_, _ = get(flooder, ctx)
			}
		})
	}
	eventually(t, "the flooder's backlog is queued", func() bool { return e.queued("workload") >= 8 })
	flood := p99()
	cancel()
	wg.Wait()
	// Then the steady flow waits for about handSize requests of the flooder, not for its backlog
	t.Logf("steady p99 alone %s, under flood %s (%.2fx)", alone, flood, float64(flood)/float64(alone))
	if flood > 5*alone+25*time.Millisecond {
		t.Errorf("steady p99 under flood = %s, alone %s", flood, alone)
	}
}
