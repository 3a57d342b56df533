package policy

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// deadEntry is a resources entry of a budget that no request ever charges,
// and why (the reason Exemption gives).
type deadEntry struct {
	index  int
	entry  string
	reason string
	// byNamespace: dead only because of the namespaces the budget names.
	byNamespace bool
}

// deadResources returns the resources entries of b that Exemption makes dead
// (every request on them is exempt, whatever its namespace, or in every
// namespace b names), and whether that is all of them. A budget without
// resources is probed as "*".
func deadResources(b *Budget, ownNamespace string) (dead []deadEntry, all bool) {
	namespaces := b.Match.Namespaces
	if slices.Contains(namespaces, "*") {
		namespaces = nil
	}
	entries := b.Match.Resources
	if len(entries) == 0 {
		entries = []string{"*"}
	}
	for i, r := range entries {
		group, resource := "", r
		if g, res, ok := strings.Cut(r, "/"); ok {
			group, resource = g, res
		}
		if r == "*" {
			group, resource = "*", "*"
		}
		// A wildcard is probed as a resource of that shape that no exemption
		// names, so only a namespace exemption (or a group one, for
		// kubedefender.io/*) can make it dead.
		probe := Attributes{APIGroup: group, Resource: resource}
		if group == "*" {
			probe.APIGroup = "example.invalid"
		}
		if resource == "*" {
			probe.Resource = "anything"
		}
		reason := Exemption(&probe, "")
		byNamespace := false
		if reason == "" && len(namespaces) > 0 {
			byNamespace = true
			reasons := map[string]bool{}
			for _, ns := range namespaces {
				a := probe
				a.Namespace = ns
				rs := Exemption(&a, ownNamespace)
				if rs == "" {
					reasons = nil
					break
				}
				reasons[rs] = true
			}
			if len(reasons) > 0 {
				reason = strings.Join(sortedKeys(reasons), "; ")
			}
		}
		if reason != "" {
			dead = append(dead, deadEntry{index: i, entry: r, reason: reason, byNamespace: byNamespace})
		}
	}
	return dead, len(dead) == len(entries)
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// validateDeadBudgets refuses a budget that can never be enforced because
// every resource it names is exempt (Exemption, the list the webhook, the
// proxy and explain share): a budget on coordination.k8s.io/leases would
// otherwise validate, be explained as matching, and never charge anything.
// A budget only some of whose resources are exempt gets a warning (Warnings).
func validateDeadBudgets(s *Spec, spec *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i := range s.Budgets {
		b := &s.Budgets[i]
		dead, all := deadResources(b, s.BreakGlass.Namespace)
		if !all {
			continue
		}
		reasons := map[string]bool{}
		byNamespace := true
		for _, d := range dead {
			reasons[d.reason] = true
			byNamespace = byNamespace && d.byNamespace
		}
		path, value := spec.Child("budgets").Index(i).Child("match", "resources"), b.Match.Resources
		if byNamespace {
			path, value = spec.Child("budgets").Index(i).Child("match", "namespaces"), b.Match.Namespaces
		}
		errs = append(errs, field.Invalid(path, value,
			fmt.Sprintf("this budget is never enforced: %s, so the webhook and the proxy admit every request it matches unjudged; remove the budget or name other resources",
				strings.Join(sortedKeys(reasons), "; "))))
	}
	return errs
}

// validateExemptions checks spec.exemptions.
func validateExemptions(s *Spec, spec *field.Path) field.ErrorList {
	if s.Exemptions == nil {
		return nil
	}
	var errs field.ErrorList
	p := spec.Child("exemptions")
	errs = append(errs, validateNamespaceList(s.Exemptions.Namespaces, p.Child("namespaces"))...)
	if ex := s.Exemptions.ExcludeNamespaces; ex != nil {
		errs = append(errs, validateNamespaceList(*ex, p.Child("excludeNamespaces"))...)
	}
	if !s.NamespaceLabelHonoured() && len(s.Exemptions.Namespaces) > 0 {
		errs = append(errs, field.Forbidden(p.Child("namespaces"),
			"names the namespaces where the "+ExemptNamespaceLabel+" label is honoured, but namespaceLabel is false, so it is honoured nowhere: remove one of the two"))
	}
	return errs
}

// validateNamespaceList checks that every entry of a list of namespace names
// at path is a DNS-1123 label and appears once.
func validateNamespaceList(namespaces []string, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	seen := map[string]bool{}
	for i, ns := range namespaces {
		np := path.Index(i)
		for _, msg := range validation.IsDNS1123Label(ns) {
			errs = append(errs, field.Invalid(np, ns, msg))
		}
		if seen[ns] {
			errs = append(errs, field.Duplicate(np, ns))
		}
		seen[ns] = true
	}
	return errs
}

// Warnings reports what a valid, defaulted policy does that its author
// probably did not mean; none of it makes the policy invalid:
//   - a budget that charges every create and update of every resource;
//   - a budget some of whose resources are exempt (never charged);
//   - a budget on namespaces the generated webhook configuration leaves out
//     by default (kube-system);
//   - a resource of a wildcard group that no standard group serves, close to
//     one that does.
func Warnings(p *DefenderPolicy) field.ErrorList {
	var warns field.ErrorList
	s := &p.Spec
	spec := field.NewPath("spec")
	for i := range s.Budgets {
		b := &s.Budgets[i]
		bp := spec.Child("budgets").Index(i)
		if chargesWrites(b.Match.Verbs) && everyResource(b.Match.Resources) {
			warns = append(warns, field.Invalid(bp.Child("match"), matchSummary(&b.Match),
				"charges every create and update of every resource it matches (each kubectl apply, each controller's write) as well as deletes: name the resources, or the verbs delete and evict; Leases and Events are never charged and the generated webhook configuration never sends them"))
		}
		if dead, all := deadResources(b, s.BreakGlass.Namespace); !all {
			for _, d := range dead {
				warns = append(warns, field.Invalid(bp.Child("match", "resources").Index(d.index), d.entry,
					"never charged by this budget: "+d.reason))
			}
		}
		for j, ns := range b.Match.Namespaces {
			if s.Excludes(ns) {
				warns = append(warns, field.Invalid(bp.Child("match", "namespaces").Index(j), ns,
					"spec.exemptions.excludeNamespaces (by default kube-system) takes "+ns+" out of every budget, at the webhook and the proxy, so this budget never judges it there: set excludeNamespaces without it to protect it"))
			}
		}
	}
	return append(warns, builtinResourceProblems(s, spec, true)...)
}

// chargesWrites says whether a budget with these verbs charges create or update.
func chargesWrites(verbs []string) bool {
	return len(verbs) == 0 || slices.Contains(verbs, "*") || slices.Contains(verbs, "create") || slices.Contains(verbs, "update")
}

// everyResource says whether resources match every resource of every group.
func everyResource(resources []string) bool {
	return len(resources) == 0 || slices.Contains(resources, "*") || slices.Contains(resources, "*/*")
}

func matchSummary(m *Match) string {
	verbs, resources := m.Verbs, m.Resources
	if len(verbs) == 0 {
		verbs = []string{"(any)"}
	}
	if len(resources) == 0 {
		resources = []string{"(any)"}
	}
	return fmt.Sprintf("verbs %v, resources %v", verbs, resources)
}
