package proxy

import (
	"errors"
	"net/http"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/sets"
	apirequest "k8s.io/apiserver/pkg/endpoints/request"

	"github.com/kubedefender/kubedefender/limiter"
)

// requestInfoFactory is stateless and shared (it only holds the API prefixes).
var requestInfoFactory = &apirequest.RequestInfoFactory{
	APIPrefixes:          sets.NewString("api", "apis"),
	GrouplessAPIPrefixes: sets.NewString("api"),
}

// WithRequestAttributes reads the request's verb, group, resource,
// subresource, namespace and name with k8s.io/apiserver's RequestInfoFactory
// and fills the attributes the limits and flow schemas match on. A create on
// pods/eviction is the verb "evict". A dry run is what the API server will
// treat as one: for delete and deletecollection the DeleteOptions in the body
// when there is a body, else in the query (readDeleteOptions); for an
// eviction the dryRun query parameter or the Eviction's deleteOptions.dryRun
// (readEvictionDryRun); for other verbs a dryRun query parameter. A PATCH
// with an apply patch content type is marked as a server-side apply (it may
// create; see budgetVerbs).
//
// The options body of a delete or an eviction is read here, before the
// limits and the priority levels, so its wait is bounded: a read deadline of
// bodyReadTimeout (Proxy passes Config.BodyReadTimeout, by default
// DefaultBodyReadTimeout; zero reads without one), after which the proxy
// answers 408 itself; a body that cannot be read is answered 400.
func WithRequestAttributes(bodyReadTimeout time.Duration, next http.Handler) http.Handler {
	infos := newRequestInfoCache()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := stateOf(r)
		info, err := infos.get(r)
		if err != nil {
			writeStatus(w, http.StatusBadRequest, "BadRequest", "kubedefender: failed to read the request path: "+err.Error(), 0)
			return
		}
		st.info = info
		a := &st.attrs.Attributes
		a.Verb, a.APIGroup, a.Resource, a.Subresource = info.Verb, info.APIGroup, info.Resource, info.Subresource
		a.Namespace, a.Name = info.Namespace, info.Name
		if info.IsResourceRequest && info.Verb == "create" && info.APIGroup == "" && info.Resource == "pods" && info.Subresource == "eviction" {
			a.Verb = "evict"
		}
		if st.user != nil {
			a.User, a.Groups = st.user.GetName(), st.user.GetGroups()
		}
		a.UserAgent = headerValue(r.Header, "User-Agent")
		switch {
		case info.IsResourceRequest && (info.Verb == "delete" || info.Verb == "deletecollection"):
			err := withBodyDeadline(w, bodyReadTimeout, func() (err error) {
				st.deleteOptions, err = readDeleteOptions(r)
				return err
			})
			if err != nil {
				bodyReadFailed(w, err)
				return
			}
			a.DryRun = st.deleteOptions.dryRun
		case info.IsResourceRequest && a.Verb == "evict":
			err := withBodyDeadline(w, bodyReadTimeout, func() (err error) {
				a.DryRun, err = readEvictionDryRun(r)
				return err
			})
			if err != nil {
				bodyReadFailed(w, err)
				return
			}
		default:
			a.DryRun = isDryRun(r)
		}
		st.applyPatch = info.IsResourceRequest && info.Verb == "patch" && isApplyPatch(headerValue(r.Header, "Content-Type"))
		st.attrs.Front = limiter.FrontProxy
		st.longRunning = isLongRunning(r, info)
		next.ServeHTTP(w, r)
	})
}

// withBodyDeadline runs read under a read deadline of timeout on the
// client's connection (its stream, over HTTP/2), lifted afterwards unless
// read failed (the request is then answered at once, and a body that did
// not come must not be waited for while the server drains it); a writer
// that cannot set deadlines (a test recorder) runs read without. The
// deadline is the network's, on the wall clock: not the proxy's clock.
func withBodyDeadline(w http.ResponseWriter, timeout time.Duration, read func() error) error {
	rc := http.NewResponseController(w)
	if timeout <= 0 || rc.SetReadDeadline(time.Now().Add(timeout)) != nil {
		return read()
	}
	if err := read(); err != nil {
		return err
	}
	_ = rc.SetReadDeadline(time.Time{})
	return nil
}

// bodyReadFailed answers a request whose options body could not be read:
// 408 when it did not arrive in time, 400 otherwise, and closes an HTTP/1.1
// connection (its unread body cannot be skipped). Nothing was forwarded and
// nothing charged.
func bodyReadFailed(w http.ResponseWriter, err error) {
	w.Header().Set("Connection", "close")
	if errors.Is(err, os.ErrDeadlineExceeded) {
		writeStatus(w, http.StatusRequestTimeout, "Timeout", "kubedefender: the request body did not arrive in time", 0)
		return
	}
	writeStatus(w, http.StatusBadRequest, "BadRequest", "kubedefender: "+err.Error(), 0)
}

// isApplyPatch reports a server-side apply patch content type
// (application/apply-patch+yaml, and +cbor where the API server takes it).
func isApplyPatch(contentType string) bool {
	const prefix = "application/apply-patch"
	return len(contentType) >= len(prefix) && strings.EqualFold(contentType[:len(prefix)], prefix)
}

// isDryRun is the API server's test for a create, update or patch: any
// dryRun query parameter (validation then admits only All).
func isDryRun(r *http.Request) bool {
	if r.URL.RawQuery == "" || !strings.Contains(r.URL.RawQuery, "dryRun") {
		return false
	}
	return len(r.URL.Query()["dryRun"]) > 0
}

// longRunningSubresources hold a connection open after their response starts.
var longRunningSubresources = map[string]bool{"attach": true, "exec": true, "portforward": true, "proxy": true}

// isLongRunning says whether a request streams for long after its response
// starts: watches, proxy, exec/attach/port-forward, followed logs and any
// connection upgrade. Such requests hold a priority-level seat only until
// their response starts.
func isLongRunning(r *http.Request, info *apirequest.RequestInfo) bool {
	if headerValue(r.Header, "Upgrade") != "" {
		return true
	}
	if info.Verb == "watch" || info.Verb == "proxy" || longRunningSubresources[info.Subresource] {
		return true
	}
	return info.Subresource == "log" && r.URL.Query().Get("follow") == "true"
}
