package policy

// GroupKubeDefender is the API group of KubeDefender's own resources
// (break-glass Overrides); no rule ever charges or denies them.
const GroupKubeDefender = "kubedefender.io"

// Exemption says why no budget ever applies to a request, or "" when the
// request is judged. It is the one list of budget exemptions: the webhook,
// the proxy (its early breaker reject and proxy-side budgets), `policy
// explain` and validation's dead-rule check all call it, so they cannot
// disagree. ownNamespace is where KubeDefender runs (the policy's
// breakGlass.namespace); empty exempts no namespace.
//
// Each exemption keeps a way to recover open whatever the policy says:
//   - kubedefender.io resources: granting, revoking and expiring Overrides;
//   - objects in KubeDefender's own namespace (not the namespace object
//     itself): its own pods can be restarted, evicted and redeployed;
//   - coordination.k8s.io Leases (leader election) and Events (core and
//     events.k8s.io): housekeeping, never a workload loss;
//   - the review resources of authentication.k8s.io and authorization.k8s.io
//     (TokenReviews, SelfSubjectReviews, SubjectAccessReviews …): creating
//     one changes nothing stored, and `kubedefender breakglass grant` asks
//     a SelfSubjectReview who its caller is, so a budget on creates must not
//     block it.
func Exemption(a *Attributes, ownNamespace string) string {
	switch {
	case a.APIGroup == GroupKubeDefender:
		return "kubedefender.io resources (break-glass overrides) are never charged"
	case ownNamespace != "" && a.Namespace == ownNamespace && !(a.APIGroup == "" && a.Resource == "namespaces"):
		return "objects in KubeDefender's own namespace are never charged"
	case IsLease(a.APIGroup, a.Resource):
		return "leases (leader election) are never charged"
	case IsEvent(a.APIGroup, a.Resource):
		return "events are never charged"
	case IsReview(a.APIGroup):
		return "access and token reviews (authentication.k8s.io, authorization.k8s.io) change nothing and are never charged"
	}
	return ""
}

// IsLease says whether group/resource names coordination.k8s.io Leases.
func IsLease(group, resource string) bool {
	return group == "coordination.k8s.io" && resource == "leases"
}

// IsEvent says whether group/resource names Events (core or events.k8s.io).
func IsEvent(group, resource string) bool {
	return resource == "events" && (group == "" || group == "events.k8s.io")
}

// IsReview says whether group holds only review resources, which are created
// and answered but never stored.
func IsReview(group string) bool {
	return group == "authentication.k8s.io" || group == "authorization.k8s.io"
}
