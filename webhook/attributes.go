package webhook

import (
	admissionv1 "k8s.io/api/admission/v1"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// GroupKubeDefender is the API group of KubeDefender's own resources
// (Overrides); the webhook never charges them.
const GroupKubeDefender = policy.GroupKubeDefender

// toAttributes maps an admission request to what the engine judges. ok is
// false for requests no budget verb describes (CONNECT, writes to
// subresources other than pods/eviction and scale); those are admitted
// unjudged.
//
// An update of a scale subresource (kubectl scale, the HPA) is judged as an
// update of its resource, as the proxy judges it: scaling a deployment to
// zero is as much a deployment update as editing its replicas. An eviction is
// a dry run when the Eviction's deleteOptions.dryRun says so (kubectl drain
// --dry-run=server), whatever the request's dryRun.
func toAttributes(r *request) (a *limiter.Attributes, ok bool) {
	var verb string
	dryRun := r.DryRun != nil && *r.DryRun
	switch r.Operation {
	case admissionv1.Delete:
		verb = "delete"
	case admissionv1.Create:
		switch {
		case r.Resource.Group == "" && r.Resource.Resource == "pods" && r.SubResource == "eviction":
			verb = "evict"
			dryRun = dryRun || r.Object.dryRun()
		case r.SubResource == "":
			verb = "create"
		}
	case admissionv1.Update:
		if r.SubResource == "" || r.SubResource == "scale" {
			verb = "update"
		}
	}
	if verb == "" {
		return nil, false
	}
	return &limiter.Attributes{
		Attributes: policy.Attributes{
			Verb:        verb,
			APIGroup:    r.Resource.Group,
			Resource:    r.Resource.Resource,
			Subresource: r.SubResource,
			Namespace:   r.Namespace,
			Name:        r.Name,
			User:        r.UserInfo.Username,
			Groups:      r.UserInfo.Groups,
			DryRun:      dryRun,
		},
		Front:  limiter.FrontWebhook,
		Checks: limiter.CheckBudgets,
	}, true
}
