package proxy

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// upstreamHealth caches the upstream's readiness: at most one probe of the
// upstream's /readyz per interval, however often readiness is asked (a load
// balancer or kubelet probing every replica, or anyone on the network
// hammering the unauthenticated /kubedefender/readyz, must not turn into
// load on the API server).
//
// The probe runs when readiness is asked and the last answer is older than
// interval; concurrent askers wait for that one probe and share its answer.
// A probe is detached from the asker's context (bounded by its own timeout),
// so a client that hangs up does not leave "context canceled" cached.
type upstreamHealth struct {
	probe    func(context.Context) error
	clock    clock.PassiveClock
	interval time.Duration

	mu      sync.Mutex
	checked time.Time // zero: never probed
	err     error
}

// ready returns nil when the upstream was ready at its last probe, made at
// most interval ago.
func (h *upstreamHealth) ready(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.checked.IsZero() && h.clock.Since(h.checked) < h.interval {
		return h.err
	}
	h.err = h.probe(context.WithoutCancel(ctx))
	h.checked = h.clock.Now()
	return h.err
}

// Readyz answers 200 when the upstream answered its /readyz with 200 at the
// last probe, 503 otherwise; probes are cached for
// Config.UpstreamHealthInterval (see upstreamHealth). The proxy listener
// serves it as /kubedefender/readyz; mount it on the metrics listener too.
func (p *Proxy) Readyz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := p.health.ready(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
}

// checkUpstream asks the upstream's /readyz over the proxy's own (plain)
// connection.
func (p *Proxy) checkUpstream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	u := *p.cfg.Upstream
	u.Path = "/readyz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("failed to build the upstream probe: %w", err)
	}
	resp, err := p.upstreamTransport.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("failed to reach the upstream: %w", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("failed to get a ready upstream: /readyz answered %s", resp.Status)
	}
	return nil
}
