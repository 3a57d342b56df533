package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"k8s.io/client-go/rest"
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
// so a client that hangs up does not leave "context canceled" cached. A
// failing probe is logged when its error first appears (or changes), and
// the recovery once; the error never goes to the asker.
type upstreamHealth struct {
	probe    func(context.Context) error
	clock    clock.PassiveClock
	interval time.Duration
	log      *slog.Logger

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
	prev, first := h.err, h.checked.IsZero()
	h.err = h.probe(context.WithoutCancel(ctx))
	h.checked = h.clock.Now()
	switch {
	case h.err != nil && (first || prev == nil || prev.Error() != h.err.Error()):
		h.log.Warn("upstream not ready", "err", h.err)
	case h.err == nil && prev != nil:
		h.log.Info("upstream ready again")
	}
	return h.err
}

// Readyz answers 200 when the upstream answered its /readyz with 200 at the
// last probe, 503 otherwise; probes are cached for
// Config.UpstreamHealthInterval (see upstreamHealth). The proxy listener
// serves it as /kubedefender/readyz, without authentication, so the answer
// says nothing of why (the upstream's address and error are logged
// instead). Mount it on the metrics listener too.
func (p *Proxy) Readyz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := p.health.ready(r.Context()); err != nil {
			http.Error(w, "kubedefender: the upstream API server is not ready (see the proxy's logs)", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
}

// readinessProbeUser is who the proxy's own readiness probe is, when it
// probes over the front-proxy connection. The API server lets any
// authenticated user read /readyz (system:public-info-viewer).
const readinessProbeUser = "kubedefender:readiness-probe"

// checkUpstream asks the upstream's /readyz with the best credentials the
// proxy has, since an API server started with --anonymous-auth=false
// answers an anonymous /readyz with 401:
//
//   - with a front-proxy certificate, over the front-proxy connection as
//     readinessProbeUser;
//   - otherwise anonymously; when that is refused (401 or 403), through the
//     TokenReview client's own credentials if there is one, and else the
//     refusal counts as ready: the API server is up and answering, and the
//     proxy has nothing to ask it with.
func (p *Proxy) checkUpstream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if p.frontCert != nil {
		code, err := p.getReadyz(ctx, p.frontTransport, readinessProbeUser)
		if err != nil {
			return err
		}
		return readyzAnswer(code)
	}
	code, err := p.getReadyz(ctx, p.upstreamTransport, "")
	if err != nil {
		return err
	}
	if code != http.StatusUnauthorized && code != http.StatusForbidden {
		return readyzAnswer(code)
	}
	rc := p.tokenReviewREST()
	if rc == nil {
		return nil
	}
	if _, err := rc.Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
		return fmt.Errorf("failed to get a ready upstream through the TokenReview client's credentials: %w", err)
	}
	return nil
}

func (p *Proxy) getReadyz(ctx context.Context, rt http.RoundTripper, user string) (int, error) {
	u := *p.cfg.Upstream
	u.Path, u.RawPath, u.RawQuery = singleJoin(u.Path, "/readyz"), "", ""
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, fmt.Errorf("failed to build the upstream probe: %w", err)
	}
	if user != "" {
		req.Header.Set(headerRemoteUser, user)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return 0, fmt.Errorf("failed to reach the upstream: %w", err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func readyzAnswer(code int) error {
	if code != http.StatusOK {
		return fmt.Errorf("failed to get a ready upstream: /readyz answered %d %s", code, http.StatusText(code))
	}
	return nil
}

// tokenReviewREST is the TokenReview client's REST client, nil when there
// is none (or a fake without one).
func (p *Proxy) tokenReviewREST() rest.Interface {
	if p.cfg.TokenReviewClient == nil {
		return nil
	}
	rc := p.cfg.TokenReviewClient.RESTClient()
	if c, ok := rc.(*rest.RESTClient); rc == nil || ok && c == nil {
		return nil
	}
	return rc
}
