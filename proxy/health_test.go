package proxy

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// TestReadyzAsksTheUpstreamAtMostOncePerInterval: /kubedefender/readyz is
// unauthenticated; however often it is called, the upstream's /readyz is
// asked at most once per interval, and its answer (good or bad) is what the
// proxy reports meanwhile.
func TestReadyzAsksTheUpstreamAtMostOncePerInterval(t *testing.T) {
	var probes atomic.Int64
	var healthy atomic.Bool
	healthy.Store(true)
	e := newEnv(t, envOptions{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			probes.Add(1)
			if !healthy.Load() {
				http.Error(w, "etcd not ready", http.StatusInternalServerError)
				return
			}
		}
		_, _ = w.Write([]byte("ok"))
	})})
	clk := clocktesting.NewFakePassiveClock(time.Now())
	e.proxy.health.clock = clk
	interval := e.proxy.cfg.UpstreamHealthInterval
	c := e.client(nil, true)
	readyz := func(n int) map[int]int {
		codes := map[int]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				resp, err := c.Get(e.proxyURL + "/kubedefender/readyz")
				if err != nil {
					t.Errorf("failed to call readyz: %v", err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				codes[resp.StatusCode]++
				mu.Unlock()
			})
		}
		wg.Wait()
		return codes
	}
	for i, tc := range []struct {
		name       string
		advance    time.Duration
		healthy    bool
		wantCode   int
		wantProbes int64
	}{
		{name: "the first calls probe once", healthy: true, wantCode: 200, wantProbes: 1},
		{name: "calls within the interval reuse the answer, even when the upstream turned bad", advance: interval - time.Millisecond, wantCode: 200, wantProbes: 1},
		{name: "after the interval one new probe sees the upstream unready", advance: time.Millisecond, wantCode: 503, wantProbes: 2},
		{name: "and the bad answer is reused too", advance: interval / 2, wantCode: 503, wantProbes: 2},
		{name: "once ready again, the next interval says so", advance: interval, healthy: true, wantCode: 200, wantProbes: 3},
	} {
		healthy.Store(tc.healthy)
		clk.SetTime(clk.Now().Add(tc.advance))
		codes := readyz(50)
		if codes[tc.wantCode] != 50 {
			t.Errorf("step %d, %s: codes %v, want 50 × %d", i, tc.name, codes, tc.wantCode)
		}
		if got := probes.Load(); got != tc.wantProbes {
			t.Errorf("step %d, %s: the upstream was probed %d times in all, want %d", i, tc.name, got, tc.wantProbes)
		}
	}
}
