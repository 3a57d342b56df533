package proxy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
)

func TestRequestInfoCache(t *testing.T) {
	c := newRequestInfoCache()
	for _, tc := range []struct {
		name, method, target string
	}{
		{name: "a list", method: http.MethodGet, target: "/api/v1/namespaces/default/configmaps"},
		{name: "a watch of the same collection", method: http.MethodGet, target: "/api/v1/namespaces/default/configmaps?watch=true"},
		{name: "a list with a field selector naming one object", method: http.MethodGet, target: "/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dweb-0"},
		{name: "a get", method: http.MethodGet, target: "/apis/apps/v1/namespaces/default/deployments/web"},
		{name: "a delete of the same object", method: http.MethodDelete, target: "/apis/apps/v1/namespaces/default/deployments/web"},
		{name: "a deletecollection", method: http.MethodDelete, target: "/api/v1/namespaces/default/pods"},
		{name: "an eviction", method: http.MethodPost, target: "/api/v1/namespaces/default/pods/web-0/eviction"},
		{name: "a non-resource path", method: http.MethodGet, target: "/healthz"},
	} {
		t.Run(tc.name+" is what the factory says, made once", func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.target, nil)
			want, err := requestInfoFactory.NewRequestInfo(r)
			if err != nil {
				t.Fatal(err)
			}
			first, err := c.get(r)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(first, want) {
				t.Errorf("cached %+v, want %+v", first, want)
			}
			again, err := c.get(httptest.NewRequest(tc.method, tc.target, nil))
			if err != nil {
				t.Fatal(err)
			}
			if again != first {
				t.Error("the same request was read again instead of coming from the cache")
			}
		})
	}
	t.Run("a path the factory refuses is an error, and not kept", func(t *testing.T) {
		r := httptest.NewRequest(http.MethodGet, "/api/v1/watch", nil) // a watch of nothing
		if _, err := requestInfoFactory.NewRequestInfo(r); err == nil {
			t.Fatal("the factory accepts /api/v1/watch: pick another path it refuses")
		}
		before := len(c.m)
		if _, err := c.get(r); err == nil {
			t.Error("no error for a path the factory refuses")
		}
		if len(c.m) != before {
			t.Error("an error was cached")
		}
	})
	t.Run("a full cache starts again", func(t *testing.T) {
		for i := range requestInfoCacheSize + 1 {
			if _, err := c.get(httptest.NewRequest(http.MethodGet, fmt.Sprintf("/api/v1/namespaces/ns-%d/pods", i), nil)); err != nil {
				t.Fatal(err)
			}
		}
		if n := len(c.m); n > requestInfoCacheSize {
			t.Errorf("%d entries, more than %d", n, requestInfoCacheSize)
		}
	})
}
