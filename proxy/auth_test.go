package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestCachedIdentityHeadersMatchTheUser(t *testing.T) {
	alice := &user.DefaultInfo{Name: "alice", Groups: []string{"dev", "ops"},
		Extra: map[string][]string{"authentication.kubernetes.io/credential-id": {"X509SHA256=ab"}}}
	bob := &user.DefaultInfo{Name: "bob"}
	want := map[*user.DefaultInfo]http.Header{
		alice: {
			"X-Remote-User":  {"alice"},
			"X-Remote-Group": {"dev", "ops"},
			"X-Remote-Extra-Authentication.kubernetes.io%2fcredential-Id": {"X509SHA256=ab"},
		},
		bob: {"X-Remote-User": {"bob"}},
	}
	c := &identityCache{}
	for _, tc := range []struct {
		name string
		u    *user.DefaultInfo
	}{
		{name: "a user's first request builds the headers", u: alice},
		{name: "another user gets its own", u: bob},
		{name: "a repeat request reuses them", u: alice},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			c.set(h, tc.u)
			// Canonicalise the way the transport would see them written.
			got := http.Header{}
			for k, v := range h {
				got[http.CanonicalHeaderKey(k)] = v
			}
			if !reflect.DeepEqual(got, want[tc.u]) {
				t.Errorf("headers = %v, want %v", got, want[tc.u])
			}
		})
	}
}

// verifyingAuthenticator stands in for the x509 authenticator: it accepts
// exactly one certificate (by its whole DER) and counts its calls.
type verifyingAuthenticator struct {
	accept []byte
	calls  int
}

func (v *verifyingAuthenticator) AuthenticateRequest(r *http.Request) (*authenticator.Response, bool, error) {
	v.calls++
	if string(r.TLS.PeerCertificates[0].Raw) != string(v.accept) {
		return nil, false, errors.New("x509: certificate signed by unknown authority")
	}
	return &authenticator.Response{User: &user.DefaultInfo{Name: "kubernetes-admin", Groups: []string{"system:masters"}}}, true, nil
}

// TestCertCacheCannotBeFooledByAPastedSignature: a certificate's signature is
// public; a forged certificate carrying the victim's signature (and the
// attacker's own key, which the TLS handshake accepts) must not hit the
// victim's cache entry.
func TestCertCacheCannotBeFooledByAPastedSignature(t *testing.T) {
	victim := &x509.Certificate{Raw: []byte("victim DER"), Signature: []byte("the victim's signature"), NotAfter: time.Now().Add(time.Hour)}
	forged := &x509.Certificate{Raw: []byte("forged DER with the attacker's key"), Signature: victim.Signature, NotAfter: victim.NotAfter}
	next := &verifyingAuthenticator{accept: victim.Raw}
	cache := newCertCache(clock.RealClock{})
	cache.next = next
	req := func(c *x509.Certificate) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/api", nil)
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}}
		return r
	}
	if resp, ok, err := cache.AuthenticateRequest(req(victim)); !ok || err != nil || resp.User.GetName() != "kubernetes-admin" {
		t.Fatalf("the victim: %v %v %v", resp, ok, err)
	}
	if _, ok, _ := cache.AuthenticateRequest(req(forged)); ok {
		t.Fatal("a forged certificate with the victim's signature was authenticated from the cache")
	}
	if _, ok, _ := cache.AuthenticateRequest(req(victim)); !ok || next.calls != 2 {
		t.Fatalf("the victim's second request: ok=%v, %d verifications, want a cache hit (2 verifications in all)", ok, next.calls)
	}
}

// TestACachedCertificateIsVerifiedAgainOnceItsEntryExpires: an entry lives
// certCacheTTL, or until the certificate expires when that comes first.
func TestACachedCertificateIsVerifiedAgainOnceItsEntryExpires(t *testing.T) {
	start := time.Now()
	for _, tc := range []struct {
		name      string
		notAfter  time.Time
		after     time.Duration
		wantCalls int
	}{
		{name: "within the cache's lifetime the entry answers", notAfter: start.Add(time.Hour), after: certCacheTTL - time.Second, wantCalls: 1},
		{name: "past the cache's lifetime the certificate is verified again", notAfter: start.Add(time.Hour), after: certCacheTTL, wantCalls: 2},
		{name: "past the certificate's expiry the certificate is verified again", notAfter: start.Add(10 * time.Second), after: 10 * time.Second, wantCalls: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktesting.NewFakePassiveClock(start)
			cert := &x509.Certificate{Raw: []byte("client DER"), NotAfter: tc.notAfter}
			next := &verifyingAuthenticator{accept: cert.Raw}
			cache := newCertCache(clk)
			cache.next = next
			r := httptest.NewRequest(http.MethodGet, "/api", nil)
			r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
			if _, ok, err := cache.AuthenticateRequest(r); !ok || err != nil {
				t.Fatalf("first request: %v %v", ok, err)
			}

			clk.SetTime(start.Add(tc.after))
			if _, ok, err := cache.AuthenticateRequest(r); !ok || err != nil {
				t.Fatalf("second request: %v %v", ok, err)
			}

			if next.calls != tc.wantCalls {
				t.Errorf("verifications = %d, want %d", next.calls, tc.wantCalls)
			}
		})
	}
}
