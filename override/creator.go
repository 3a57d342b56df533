package override

import (
	"context"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// Who created an Override.
//
// spec.requestedBy is written by the client, and managedFields name a field
// manager (a client-chosen string), never the user; Kubernetes keeps no
// "creator" of its own. What makes requestedBy true is an admission check the
// API server runs itself: the ValidatingAdmissionPolicy CreatorPolicy, shipped
// beside the CRD (deploy/base/crd-override.yaml), refuses a CREATE whose
// requestedBy is not request.userInfo.username and an UPDATE that changes it.
// It is evaluated in the API server, so it holds while KubeDefender is down or
// unreachable and cannot be talked around with a forged AdmissionReview,
// unlike a check in KubeDefender's own webhook (failurePolicy Ignore by
// default). `breakglass grant` fills requestedBy from a SelfSubjectReview.
//
// KubeDefender cannot prove after the fact who created an object, so the
// controller and `breakglass list` look for the policy and its binding and
// say whether requestedBy was checked (CreatorCheck).

// CreatorPolicy names the ValidatingAdmissionPolicy and its binding.
const CreatorPolicy = "kubedefender-override-requested-by"

var (
	vapGVR        = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicies"}
	vapBindingGVR = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicybindings"}
)

// Creator checks, as CreatorCheck reports them.
const (
	CreatorVerified   = "verified"   // the policy and its Deny binding are installed
	CreatorUnverified = "unverified" // they are not: requestedBy is what the creator typed
	CreatorUnknown    = "unknown"    // they could not be read (e.g. RBAC)
)

// CreatorCheck reports whether the API server checks spec.requestedBy of
// Overrides against the authenticated creator: CreatorVerified when the
// policy CreatorPolicy and a binding of it that denies are installed,
// CreatorUnverified when either is missing, CreatorUnknown (with the error)
// when they cannot be read.
func CreatorCheck(ctx context.Context, dyn dynamic.Interface) (string, error) {
	if _, err := dyn.Resource(vapGVR).Get(ctx, CreatorPolicy, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return CreatorUnverified, nil
		}
		return CreatorUnknown, fmt.Errorf("failed to read ValidatingAdmissionPolicy %s: %w", CreatorPolicy, err)
	}
	b, err := dyn.Resource(vapBindingGVR).Get(ctx, CreatorPolicy, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return CreatorUnverified, nil
		}
		return CreatorUnknown, fmt.Errorf("failed to read ValidatingAdmissionPolicyBinding %s: %w", CreatorPolicy, err)
	}
	policyName, _, _ := unstructured.NestedString(b.Object, "spec", "policyName")
	actions, _, _ := unstructured.NestedStringSlice(b.Object, "spec", "validationActions")
	if policyName != CreatorPolicy || !slices.Contains(actions, "Deny") {
		return CreatorUnverified, nil
	}
	return CreatorVerified, nil
}

// creatorNote is how logs, Events and tables qualify requestedBy.
func creatorNote(check string) string {
	switch check {
	case CreatorVerified:
		return "authenticated at admission"
	case CreatorUnverified:
		return "NOT verified: ValidatingAdmissionPolicy " + CreatorPolicy + " is not installed, so anyone who may create Overrides can write any name"
	}
	return "not known to be verified: ValidatingAdmissionPolicy " + CreatorPolicy + " could not be read"
}
