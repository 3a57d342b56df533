package proxy

import (
	"errors"
	"fmt"
	"net/http"

	policyv1 "k8s.io/api/policy/v1"
	policyv1beta1 "k8s.io/api/policy/v1beta1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apiserver/pkg/endpoints/handlers/negotiation"
)

// evictionCodecs decode the Eviction kinds pods/eviction accepts (policy/v1
// and policy/v1beta1); stateless and shared.
var evictionCodecs = func() serializer.CodecFactory {
	s := runtime.NewScheme()
	utilruntime.Must(policyv1.AddToScheme(s))
	utilruntime.Must(policyv1beta1.AddToScheme(s))
	return serializer.NewCodecFactory(s)
}()

// evictionKind is the kind a body without one decodes as, as the API server
// gives it for pods/eviction.
var evictionKind = policyv1.SchemeGroupVersion.WithKind("Eviction")

// readEvictionDryRun says whether the API server will only dry-run an
// eviction (k8s.io/kubernetes pkg/registry/core/pod/storage eviction.go,
// propagateDryRun): when the dryRun query parameter is set, or when the
// Eviction in the body has deleteOptions.dryRun set — `kubectl drain
// --dry-run=server` sends the latter. The body is peeked like a DELETE's
// (peekBody, up to MaxDeleteOptionsBytes) and forwarded whole; a body too
// large or undecodable leaves the query alone to decide (the safe side: the
// API server refuses an undecodable Eviction). The error is the body's read
// error, as for readDeleteOptions.
func readEvictionDryRun(r *http.Request) (bool, error) {
	query := isDryRun(r)
	body, err := peekBody(r, MaxDeleteOptionsBytes)
	switch {
	case errors.Is(err, errBodyTooLarge):
		return query, nil
	case err != nil:
		return query, fmt.Errorf("failed to read the request body: %w", err)
	case len(body) == 0:
		return query, nil
	}
	return query || evictionBodyDryRun(headerValue(r.Header, "Content-Type"), body), nil
}

// evictionBodyDryRun decodes an Eviction by its Content-Type (JSON, YAML or
// protobuf) and reports whether its deleteOptions ask for a dry run; false
// when it cannot be decoded.
func evictionBodyDryRun(contentType string, body []byte) bool {
	s, err := negotiation.NegotiateInputSerializerForMediaType(contentType, false, evictionCodecs)
	if err != nil {
		return false
	}
	gvk := evictionKind
	obj, _, err := s.Serializer.Decode(body, &gvk, nil)
	if err != nil {
		return false
	}
	switch e := obj.(type) {
	case *policyv1.Eviction:
		return e.DeleteOptions != nil && len(e.DeleteOptions.DryRun) > 0
	case *policyv1beta1.Eviction:
		return e.DeleteOptions != nil && len(e.DeleteOptions.DryRun) > 0
	}
	return false
}
