package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The AdmissionReview version this webhook speaks.
const (
	reviewAPIVersion = "admission.k8s.io/v1"
	reviewKind       = "AdmissionReview"
)

// review is the part of an AdmissionReview the webhook reads. Decoding into
// it skips object and oldObject (a DELETE carries the whole old object)
// without copying them.
type review struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Request    *request `json:"request"`
}

type request struct {
	UID         types.UID                   `json:"uid"`
	Resource    metav1.GroupVersionResource `json:"resource"`
	SubResource string                      `json:"subResource"`
	Name        string                      `json:"name"`
	Namespace   string                      `json:"namespace"`
	Operation   admissionv1.Operation       `json:"operation"`
	UserInfo    userInfo                    `json:"userInfo"`
	DryRun      *bool                       `json:"dryRun"`
	// OldObject is read for its UID, deletion timestamp and finalizers (a
	// DELETE's object), and the replicas or taints of its spec (cascade
	// roots).
	OldObject struct {
		Metadata struct {
			UID               types.UID `json:"uid"`
			DeletionTimestamp string    `json:"deletionTimestamp"`
			Finalizers        []string  `json:"finalizers"`
		} `json:"metadata"`
		Spec specFields `json:"spec"`
	} `json:"oldObject"`
	// Object is read for an Eviction's deleteOptions (pods/eviction) and the
	// replicas or taints of its spec (cascade roots).
	Object evictionObject `json:"object"`
	// Options are a DELETE's DeleteOptions (the propagation of a workload
	// delete), kept raw until needed.
	Options json.RawMessage `json:"options"`
}

// evictionObject is what the webhook reads of a pods/eviction CREATE's object,
// a policy/v1 (or v1beta1) Eviction: the API server dry-runs an eviction whose
// deleteOptions.dryRun is set whatever the request's own dryRun (which comes
// from the CreateOptions), and deletes the pod only if its UID matches
// deleteOptions.preconditions.uid when one is given.
type evictionObject struct {
	// Spec is read for any object (see specFields).
	Spec          specFields `json:"spec"`
	APIVersion    string     `json:"apiVersion"`
	Kind          string     `json:"kind"`
	DeleteOptions *struct {
		DryRun        []string `json:"dryRun"`
		Preconditions *struct {
			UID *types.UID `json:"uid"`
		} `json:"preconditions"`
	} `json:"deleteOptions"`
}

// deleteOptionsKey is how an object that may be an Eviction is recognised
// before it is decoded: any other object (up to 3 MiB) is skipped unread.
var deleteOptionsKey = []byte(`"deleteOptions"`)

// UnmarshalJSON reads an Eviction and skips anything else. It never fails:
// an object that is not an Eviction of the expected shape (a custom resource
// with a deleteOptions field of another type) leaves it zero, which reads as
// a real eviction without a UID precondition.
func (e *evictionObject) UnmarshalJSON(data []byte) error {
	if containsAny(data, replicasKey, taintsKey) {
		var s struct {
			Spec specFields `json:"spec"`
		}
		if json.Unmarshal(data, &s) == nil {
			e.Spec = s.Spec
		}
	}
	if !bytes.Contains(data, deleteOptionsKey) {
		return nil
	}
	type plain evictionObject
	var p plain
	if json.Unmarshal(data, &p) == nil && p.Kind == "Eviction" &&
		(p.APIVersion == "policy/v1" || p.APIVersion == "policy/v1beta1") {
		*e = evictionObject(p)
	}
	return nil
}

// dryRun says whether the Eviction asks only for a dry run: the API server's
// eviction REST treats any deleteOptions.dryRun as one (propagateDryRun).
func (e *evictionObject) dryRun() bool {
	return e.DeleteOptions != nil && len(e.DeleteOptions.DryRun) > 0
}

// podUID is the pod UID the Eviction is conditioned on, or "": the API server
// evicts the pod only if it is that UID.
func (e *evictionObject) podUID() types.UID {
	if e.DeleteOptions == nil || e.DeleteOptions.Preconditions == nil || e.DeleteOptions.Preconditions.UID == nil {
		return ""
	}
	return *e.DeleteOptions.Preconditions.UID
}

type userInfo struct {
	Username string   `json:"username"`
	Groups   []string `json:"groups"`
}

// decodeError is a request the webhook cannot judge; its message is sent
// back with a 400.
type decodeError struct{ msg string }

func (e *decodeError) Error() string { return e.msg }

// decodeReview decodes and checks one AdmissionReview body. Any error is a
// *decodeError whose message says what is wrong and where.
func decodeReview(body []byte) (*request, error) {
	var rv review
	if scanReview(body, &rv) != nil {
		// What the scanner refuses or declines, encoding/json decodes or
		// words the error for.
		// (Into its own variable: rv stays on the stack on the fast path.)
		var slow review
		if err := json.Unmarshal(body, &slow); err != nil {
			return nil, &decodeError{msg: "failed to decode AdmissionReview: " + describeJSONError(body, err)}
		}
		rv = slow
	}
	return checkReview(&rv)
}

// checkReview checks that a decoded review is one the webhook can judge.
func checkReview(rv *review) (*request, error) {
	switch {
	case rv.APIVersion != reviewAPIVersion:
		return nil, &decodeError{msg: fmt.Sprintf("failed to decode AdmissionReview: apiVersion %q is not supported: this webhook speaks %s (admissionReviewVersions: [v1])", rv.APIVersion, reviewAPIVersion)}
	case rv.Kind != reviewKind:
		return nil, &decodeError{msg: fmt.Sprintf("failed to decode AdmissionReview: kind %q, want %s", rv.Kind, reviewKind)}
	case rv.Request == nil:
		return nil, &decodeError{msg: "failed to decode AdmissionReview: request is missing"}
	case rv.Request.UID == "":
		return nil, &decodeError{msg: "failed to decode AdmissionReview: request.uid is missing"}
	case rv.Request.Operation == "":
		return nil, &decodeError{msg: "failed to decode AdmissionReview: request.operation is missing"}
	}
	return rv.Request, nil
}

func describeJSONError(body []byte, err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case len(bytes.TrimSpace(body)) == 0:
		return "the body is empty"
	case err.Error() == "unexpected end of JSON input":
		return "the JSON is truncated (unexpected end of input after " + strconv.Itoa(len(body)) + " bytes)"
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.As(err, &typ):
		return fmt.Sprintf("field %s: cannot use a JSON %s as %s", typ.Field, typ.Value, typ.Type)
	}
	return err.Error()
}

// encodeResponse writes the AdmissionReview that answers uid.
func encodeResponse(resp *admissionv1.AdmissionResponse) ([]byte, error) {
	out := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: reviewAPIVersion, Kind: reviewKind},
		Response: resp,
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Messages carry "<ticket>: <why>"; keep them readable on the wire.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&out); err != nil {
		return nil, fmt.Errorf("failed to encode AdmissionReview: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
