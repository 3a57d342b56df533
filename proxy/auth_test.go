package proxy

import (
	"net/http"
	"reflect"
	"testing"

	"k8s.io/apiserver/pkg/authentication/user"
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
