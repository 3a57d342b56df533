package proxy

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/utils/clock"
)

// Identity headers the API server reads from a front proxy
// (--requestheader-username-headers, -group-headers, -extra-headers-prefix).
const (
	headerRemoteUser  = "X-Remote-User"
	headerRemoteGroup = "X-Remote-Group"
	headerRemoteExtra = "X-Remote-Extra-"
	remotePrefix      = "X-Remote-"
)

// WithHeaderHygiene removes every client-sent X-Remote-* header (user, group,
// extra, uid, in any case) before anything else reads the request: only the
// proxy asserts identity to the API server.
func WithHeaderHygiene(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := credentialHopByHop(r.Header); h != "" {
			// The reverse proxy drops the headers Connection names: the
			// API server would not see the credential the proxy judged.
			writeStatus(w, http.StatusBadRequest, "BadRequest",
				"kubedefender: the Connection header may not name "+h+": the proxy judges a request by the credentials the API server will see", 0)
			return
		}
		for k := range r.Header {
			// Header keys are canonical ("X-Remote-User"); a non-canonical key
			// set by a server-side hook is still caught by the fold.
			if len(k) >= len(remotePrefix) && strings.EqualFold(k[:len(remotePrefix)], remotePrefix) {
				delete(r.Header, k)
			}
		}
		next.ServeHTTP(w, r)
	})
}

// credentialHopByHop returns a header the Connection header names that
// carries who the client is (Authorization, Sec-WebSocket-Protocol,
// Impersonate-*), or "".
func credentialHopByHop(h http.Header) string {
	for _, line := range h["Connection"] {
		for f := range strings.SplitSeq(line, ",") {
			f = http.CanonicalHeaderKey(strings.TrimSpace(f))
			if f == "Authorization" || f == "Sec-Websocket-Protocol" || strings.HasPrefix(f, "Impersonate-") {
				return f
			}
		}
	}
	return ""
}

// AuthConfig configures WithAuthentication.
type AuthConfig struct {
	Mode          AuthMode
	Authenticator authenticator.Request
	// CanForwardIdentity: a front-proxy certificate is configured, so an
	// identity can be asserted upstream with X-Remote-* headers.
	CanForwardIdentity bool
	Logger             *slog.Logger
}

// publicPaths are what the API server lets anyone read (system:public-info-viewer):
// front-proxy mode forwards them anonymously instead of answering 401.
var publicPaths = map[string]bool{"/healthz": true, "/livez": true, "/readyz": true, "/version": true}

// WithAuthentication establishes who the client is and how it is
// represented upstream (see the package doc for both modes).
func WithAuthentication(cfg AuthConfig, next http.Handler) http.Handler {
	log := cfg.Logger
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := stateOf(r)
		if cfg.Mode == AuthPassthrough {
			// The authenticators delete the credentials they accept; in
			// passthrough mode the API server must still get them.
			authz, proto := r.Header.Values("Authorization"), r.Header.Values("Sec-Websocket-Protocol")
			ar := r
			if len(authz) > 0 || hasBearerProtocol(proto) {
				// The API server acts as the token's user: it never sees the
				// client certificate, which ends at this proxy. So the
				// certificate must not decide who the limits see, even when
				// it is valid and the token is not.
				ar = withoutClientCert(r)
			}
			resp, ok, err := cfg.Authenticator.AuthenticateRequest(ar)
			restoreHeader(r.Header, "Authorization", authz)
			restoreHeader(r.Header, "Sec-Websocket-Protocol", proto)
			switch {
			case ok && len(authz) == 0 && !hasBearerProtocol(proto) && hasClientCert(r):
				// Authenticated by the certificate alone, which cannot reach
				// the API server through TLS termination.
				if !cfg.CanForwardIdentity {
					writeStatus(w, http.StatusUnauthorized, "Unauthorized",
						"kubedefender: client certificates cannot be passed through a TLS-terminating proxy; use a token, or run the proxy with --auth-mode=front-proxy", 0)
					return
				}
				st.user, st.forwardIdentity = resp.User, true
			case ok:
				st.user = resp.User
			default:
				if err != nil {
					log.Debug("passthrough request not authenticated; the API server will judge it", "err", err)
				}
				st.user = anonymous
			}
			next.ServeHTTP(w, r)
			return
		}
		resp, ok, token, err := authenticateFrontProxy(cfg.Authenticator, r)
		if !ok {
			if publicPaths[r.URL.Path] {
				st.user = anonymous
				next.ServeHTTP(w, r)
				return
			}
			if err != nil {
				log.Info("request not authenticated", "path", r.URL.Path, "err", err)
			}
			writeStatus(w, http.StatusUnauthorized, "Unauthorized", "Unauthorized", 0)
			return
		}
		// A user authenticated by its bearer token keeps it: the API server
		// verifies that credential itself. Only an identity the API server
		// cannot see (a client certificate ends at this proxy) is asserted.
		st.user, st.forwardIdentity = resp.User, !token
		next.ServeHTTP(w, r)
	})
}

// authenticateFrontProxy authenticates a front-proxy mode request and
// leaves on it only the credential the API server should see. A verified
// client certificate comes first, as in the API server's own authenticator:
// its identity is asserted, and any token is removed (token is false). A
// request the certificate does not authenticate is judged by its bearer
// token alone; when the token authenticates it, token is true and that
// token, and only it, stays on the request (an Authorization header, or a
// WebSocket bearer protocol), so that the API server authenticates the very
// credential the proxy judged. Otherwise every token is removed.
func authenticateFrontProxy(a authenticator.Request, r *http.Request) (resp *authenticator.Response, ok, token bool, err error) {
	authz, proto := r.Header.Values("Authorization"), r.Header.Values("Sec-Websocket-Protocol")
	hasToken := len(authz) > 0 || hasBearerProtocol(proto)
	if !hasToken {
		resp, ok, err = a.AuthenticateRequest(r)
		return resp, ok, false, err
	}
	// The credentials are read from the request's header map; the
	// authenticators delete the ones they accept.
	stripTokens := func() {
		delete(r.Header, "Authorization")
		stripBearerProtocol(r.Header)
	}
	if hasClientCert(r) {
		stripTokens()
		// A certificate that fails falls through to the token, whose
		// answer (and error) is the request's.
		if certResp, certOK, _ := a.AuthenticateRequest(r); certOK {
			return certResp, true, false, nil
		}
		restoreHeader(r.Header, "Authorization", authz)
		restoreHeader(r.Header, "Sec-Websocket-Protocol", proto)
	}
	resp, ok, err = a.AuthenticateRequest(withoutClientCert(r))
	if !ok {
		stripTokens()
		return resp, false, false, err
	}
	// Which token was accepted shows in what its authenticator removed.
	authzUsed := len(authz) > 0 && len(r.Header.Values("Authorization")) == 0
	protoUsed := hasBearerProtocol(proto) && !hasBearerProtocol(r.Header.Values("Sec-Websocket-Protocol"))
	switch {
	case authzUsed:
		restoreHeader(r.Header, "Authorization", authz)
		restoreHeader(r.Header, "Sec-Websocket-Protocol", proto)
		stripBearerProtocol(r.Header)
	case protoUsed:
		delete(r.Header, "Authorization")
		restoreHeader(r.Header, "Sec-Websocket-Protocol", proto)
	default:
		// Authenticated, but not visibly by a token: assert it.
		stripTokens()
		return resp, true, false, nil
	}
	return resp, true, true, nil
}

var anonymous = &user.DefaultInfo{Name: user.Anonymous, Groups: []string{user.AllUnauthenticated}}

func restoreHeader(h http.Header, k string, v []string) {
	if len(v) == 0 {
		delete(h, k)
		return
	}
	h[k] = v
}

// headerValue is h.Get(key) for a canonical key: the server stores request
// headers under canonical keys, so the lookup need not canonicalize key
// again.
func headerValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// withoutClientCert returns a shallow copy of r (same headers) whose TLS
// state carries no client certificate.
func withoutClientCert(r *http.Request) *http.Request {
	if !hasClientCert(r) {
		return r
	}
	c := *r
	cs := *r.TLS
	cs.PeerCertificates, cs.VerifiedChains = nil, nil
	c.TLS = &cs
	return &c
}

func hasClientCert(r *http.Request) bool { return r.TLS != nil && len(r.TLS.PeerCertificates) > 0 }

// bearerProtocolPrefix is how a WebSocket client carries a token in
// Sec-WebSocket-Protocol.
const bearerProtocolPrefix = "base64url.bearer.authorization.k8s.io."

// hasBearerProtocol tells whether one of the offered protocols is a bearer
// token, read as Kubernetes' WebSocket authenticator reads them (comma-split,
// trimmed, the prefix at the start): a protocol that only contains the prefix
// is not a token, and must not hide that the real one was used.
func hasBearerProtocol(protos []string) bool {
	for _, line := range protos {
		for p := range strings.SplitSeq(line, ",") {
			if strings.HasPrefix(strings.TrimSpace(p), bearerProtocolPrefix) {
				return true
			}
		}
	}
	return false
}

// stripBearerProtocol removes a WebSocket bearer token from
// Sec-WebSocket-Protocol, keeping the other protocols offered.
func stripBearerProtocol(h http.Header) {
	protos := h.Values("Sec-Websocket-Protocol")
	if !hasBearerProtocol(protos) {
		return
	}
	var keep []string
	for _, line := range protos {
		for _, p := range strings.Split(line, ",") {
			if p = strings.TrimSpace(p); p != "" && !strings.HasPrefix(p, bearerProtocolPrefix) {
				keep = append(keep, p)
			}
		}
	}
	if len(keep) == 0 {
		h.Del("Sec-Websocket-Protocol")
		return
	}
	h.Set("Sec-Websocket-Protocol", strings.Join(keep, ","))
}

// setIdentityHeaders writes the identity for the API server's request-header
// authenticator. Extra keys are path-escaped as the API server expects.
func setIdentityHeaders(h http.Header, u user.Info) {
	for _, kv := range identityHeadersOf(u) {
		h[kv.key] = kv.values
	}
}

// identityHeader is one X-Remote-* header and its values. Its values may be
// shared by many requests and are never modified.
type identityHeader struct {
	key    string
	values []string
}

func identityHeadersOf(u user.Info) []identityHeader {
	out := make([]identityHeader, 0, 2+len(u.GetExtra()))
	out = append(out, identityHeader{key: headerRemoteUser, values: []string{u.GetName()}})
	if g := u.GetGroups(); len(g) > 0 {
		out = append(out, identityHeader{key: headerRemoteGroup, values: g})
	}
	for k, v := range u.GetExtra() {
		out = append(out, identityHeader{key: headerRemoteExtra + url.PathEscape(k), values: v})
	}
	return out
}

// identityCache keeps the identity headers of the users the authenticator
// hands out. Its caches (certificates, tokens) return the same
// *user.DefaultInfo for a credential while it is cached, so the headers of a
// user are built once per cache entry rather than once per request. Users
// of another type are not cached.
type identityCache struct {
	m sync.Map // *user.DefaultInfo -> []identityHeader
	n atomic.Int64
}

// identityCacheSize bounds the cache; full, it starts again empty.
const identityCacheSize = 4096

func (c *identityCache) set(h http.Header, u user.Info) {
	du, ok := u.(*user.DefaultInfo)
	if !ok {
		setIdentityHeaders(h, u)
		return
	}
	var hs []identityHeader
	if v, ok := c.m.Load(du); ok {
		hs = v.([]identityHeader)
	} else {
		hs = identityHeadersOf(u)
		if c.n.Add(1) > identityCacheSize {
			c.m.Clear()
			c.n.Store(1)
		}
		c.m.Store(du, hs)
	}
	for _, kv := range hs {
		h[kv.key] = kv.values
	}
}

// buildAuthenticator builds k8s.io/apiserver's delegating authenticator
// (client certificates against the client CA, then bearer tokens through a
// cached TokenReview) behind a per-certificate cache.
func (p *Proxy) buildAuthenticator() error {
	cfg := authenticatorfactory.DelegatingAuthenticatorConfig{
		CacheTTL:                 p.cfg.TokenCacheTTL,
		TokenAccessReviewTimeout: 10 * time.Second,
		WebhookRetryBackoff:      &wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Steps: 3},
	}
	if p.cfg.TokenReviewClient != nil {
		cfg.TokenAccessReviewClient = p.cfg.TokenReviewClient
	}
	cache := newCertCache(p.clock)
	if p.cfg.ClientCAFile != "" {
		ca, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", p.cfg.ClientCAFile)
		if err != nil {
			return fmt.Errorf("failed to load the client CA: %w", err)
		}
		ca.AddListener(cache)
		p.clientCA = ca
		cfg.ClientCertificateCAContentProvider = ca
	}
	if cfg.ClientCertificateCAContentProvider == nil && cfg.TokenAccessReviewClient == nil {
		// Passthrough without any way to learn identities: everyone is
		// limited as anonymous and the API server authenticates.
		p.auth = authenticator.RequestFunc(func(*http.Request) (*authenticator.Response, bool, error) { return nil, false, nil })
		return nil
	}
	a, _, err := cfg.New()
	if err != nil {
		return fmt.Errorf("failed to build the authenticator: %w", err)
	}
	cache.next = a
	p.auth = cache
	return nil
}

// certCache remembers the identity of a verified client certificate for a
// while, so that a connection's requests do not each pay for a chain
// verification. Only requests without a token use it (a token never changes
// who a verified certificate is, but a failed certificate falls through to
// the token). A change of the client CA empties it.
type certCache struct {
	next  authenticator.Request
	clock clock.PassiveClock
	mu    sync.Mutex
	// entries are keyed by the hash of the whole leaf certificate: its
	// signature alone is public and could be pasted into a forged certificate
	// with the attacker's own key (the handshake proves only the key).
	entries map[[sha256.Size]byte]certEntry
}

func newCertCache(clk clock.PassiveClock) *certCache {
	return &certCache{clock: clk, entries: map[[sha256.Size]byte]certEntry{}}
}

type certEntry struct {
	resp    *authenticator.Response
	expires time.Time
}

const (
	certCacheTTL  = 30 * time.Second
	certCacheSize = 4096
)

// Enqueue is called when the client CA changes.
func (c *certCache) Enqueue() {
	c.mu.Lock()
	clear(c.entries)
	c.mu.Unlock()
}

func (c *certCache) AuthenticateRequest(r *http.Request) (*authenticator.Response, bool, error) {
	if !hasClientCert(r) || headerValue(r.Header, "Authorization") != "" || hasBearerProtocol(r.Header["Sec-Websocket-Protocol"]) {
		return c.next.AuthenticateRequest(r)
	}
	leaf := r.TLS.PeerCertificates[0]
	key := sha256.Sum256(leaf.Raw)
	now := c.clock.Now()
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.resp, true, nil
	}
	resp, ok, err := c.next.AuthenticateRequest(r)
	if !ok || err != nil {
		return resp, ok, err
	}
	exp := now.Add(certCacheTTL)
	if leaf.NotAfter.Before(exp) {
		exp = leaf.NotAfter
	}
	c.mu.Lock()
	if len(c.entries) >= certCacheSize {
		clear(c.entries)
	}
	c.entries[key] = certEntry{resp: resp, expires: exp}
	c.mu.Unlock()
	return resp, true, nil
}
