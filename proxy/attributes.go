package proxy

import (
	"net/http"
	"strings"

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
// when there is a body, else in the query (readDeleteOptions); for other
// verbs a dryRun query parameter.
func WithRequestAttributes(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := stateOf(r)
		info, err := requestInfoFactory.NewRequestInfo(r)
		if err != nil {
			writeStatus(w, http.StatusBadRequest, "BadRequest", "kubedefender: failed to read the request path: "+err.Error(), 0)
			return
		}
		st.info = info
		a := &st.attrs.Attributes
		a.Verb, a.APIGroup, a.Resource, a.Subresource = info.Verb, info.APIGroup, info.Resource, info.Subresource
		a.Namespace, a.Name = info.Namespace, info.Name
		if info.IsResourceRequest && info.Verb == "create" && info.Resource == "pods" && info.Subresource == "eviction" {
			a.Verb = "evict"
		}
		if st.user != nil {
			a.User, a.Groups = st.user.GetName(), st.user.GetGroups()
		}
		a.UserAgent = headerValue(r.Header, "User-Agent")
		if info.IsResourceRequest && (info.Verb == "delete" || info.Verb == "deletecollection") {
			st.deleteOptions = readDeleteOptions(r)
			a.DryRun = st.deleteOptions.dryRun
		} else {
			a.DryRun = isDryRun(r)
		}
		st.attrs.Front = limiter.FrontProxy
		st.longRunning = isLongRunning(r, info)
		next.ServeHTTP(w, r)
	})
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
