package policy

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// clusterScoped are the cluster-scoped resources of the built-in API groups:
// a root request never removes them as a cascade (cascades: AtRoot counts
// namespaced objects), so an AtRoot budget on them alone counts nothing.
var clusterScoped = map[string][]string{
	"":                             {"componentstatuses", "namespaces", "nodes", "persistentvolumes"},
	"admissionregistration.k8s.io": {"mutatingadmissionpolicies", "mutatingadmissionpolicybindings", "mutatingwebhookconfigurations", "validatingadmissionpolicies", "validatingadmissionpolicybindings", "validatingwebhookconfigurations"},
	"apiextensions.k8s.io":         {"customresourcedefinitions"},
	"apiregistration.k8s.io":       {"apiservices"},
	"authentication.k8s.io":        {"selfsubjectreviews", "tokenreviews"},
	"authorization.k8s.io":         {"selfsubjectaccessreviews", "selfsubjectrulesreviews", "subjectaccessreviews"},
	"certificates.k8s.io":          {"certificatesigningrequests", "clustertrustbundles"},
	"flowcontrol.apiserver.k8s.io": {"flowschemas", "prioritylevelconfigurations"},
	"internal.apiserver.k8s.io":    {"storageversions"},
	"networking.k8s.io":            {"ingressclasses", "ipaddresses", "servicecidrs"},
	"node.k8s.io":                  {"runtimeclasses"},
	"rbac.authorization.k8s.io":    {"clusterrolebindings", "clusterroles"},
	"resource.k8s.io":              {"deviceclasses", "resourceslices"},
	"scheduling.k8s.io":            {"priorityclasses"},
	"storage.k8s.io":               {"csidrivers", "csinodes", "storageclasses", "volumeattachments", "volumeattributesclasses"},
	"storagemigration.k8s.io":      {"storageversionmigrations"},
}

// cascadeVerbs are the verbs an AtRoot budget judges a removal as.
var cascadeVerbs = []string{"delete", "deletecollection", "evict", "*"}

// validateCascades checks a budget's cascades: a known mode, and AtRoot only
// where it can count something.
func validateCascades(b *Budget, path *field.Path) field.ErrorList {
	p := path.Child("cascades")
	switch b.Cascades {
	case CascadesPerObject:
		return nil
	case CascadesAtRoot:
	default:
		return field.ErrorList{field.NotSupported(p, b.Cascades, []CascadeMode{CascadesPerObject, CascadesAtRoot})}
	}
	var errs field.ErrorList
	if len(b.Match.Verbs) > 0 && !slices.ContainsFunc(b.Match.Verbs, func(v string) bool { return slices.Contains(cascadeVerbs, v) }) {
		errs = append(errs, field.Invalid(p, b.Cascades, fmt.Sprintf(
			"AtRoot charges a root request (a namespace, workload or node delete, a scale-down, a NoExecute taint) for the objects it removes, each judged as a delete; match.verbs (%s) holds none of delete, deletecollection, evict, so it would never count one: add delete, or drop cascades (PerObject)",
			strings.Join(b.Match.Verbs, ", "))))
	}
	if len(b.Match.Resources) > 0 && !slices.ContainsFunc(b.Match.Resources, func(r string) bool { return !isClusterScoped(r) }) {
		errs = append(errs, field.Invalid(p, b.Cascades, fmt.Sprintf(
			"AtRoot counts the namespaced objects a root removes (the pods of a deleted workload or node, of a scale-down or taint; what a deleted namespace holds); %s %s cluster-scoped and never removed that way, so AtRoot would count nothing: drop cascades (PerObject) to charge their own deletes",
			strings.Join(b.Match.Resources, ", "), isAre(len(b.Match.Resources)))))
	}
	return errs
}

// isClusterScoped reports whether a match.resources entry ("pods",
// "apps/deployments", "apps/*", "*") names only cluster-scoped resources of
// the built-in groups.
func isClusterScoped(r string) bool {
	group, res, ok := strings.Cut(r, "/")
	if !ok {
		group, res = "", r
	}
	return slices.Contains(clusterScoped[group], res)
}

func isAre(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}

// withoutLaterDefaults returns p, or a copy of it without the defaults of
// fields added after policies were first hashed (cascades: PerObject), so a
// policy that does not use them keeps the hash it had before (the webhook
// configuration's annotation, reload detection).
func withoutLaterDefaults(p *DefenderPolicy) *DefenderPolicy {
	if !slices.ContainsFunc(p.Spec.Budgets, func(b Budget) bool { return b.Cascades == CascadesPerObject }) {
		return p
	}
	c := *p
	c.Spec.Budgets = slices.Clone(p.Spec.Budgets)
	for i := range c.Spec.Budgets {
		if c.Spec.Budgets[i].Cascades == CascadesPerObject {
			c.Spec.Budgets[i].Cascades = ""
		}
	}
	return &c
}
