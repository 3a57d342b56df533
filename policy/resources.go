package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// ResourceTable lists the resources (plural names, no subresources) an API
// server serves, by API group ("" is the core group).
type ResourceTable map[string][]string

// Has says whether the table lists group/resource.
func (t ResourceTable) Has(group, resource string) bool {
	return slices.Contains(t[group], resource)
}

// GroupsOf returns the groups that serve resource, sorted.
func (t ResourceTable) GroupsOf(resource string) []string {
	var groups []string
	for g, rs := range t {
		if slices.Contains(rs, resource) {
			groups = append(groups, g)
		}
	}
	sort.Strings(groups)
	return groups
}

// builtinResources are the resources of the API groups built into
// kube-apiserver (and kube-aggregator), as served by Kubernetes 1.31 to 1.34.
// These groups are closed: a resource not listed in one of them is a typo,
// not a custom resource. Groups outside this table may be CRDs or aggregated
// APIs, which only discovery can check.
var builtinResources = ResourceTable{
	"": {"bindings", "componentstatuses", "configmaps", "endpoints", "events", "limitranges", "namespaces", "nodes",
		"persistentvolumeclaims", "persistentvolumes", "pods", "podtemplates", "replicationcontrollers",
		"resourcequotas", "secrets", "serviceaccounts", "services"},
	"admissionregistration.k8s.io": {"mutatingadmissionpolicies", "mutatingadmissionpolicybindings", "mutatingwebhookconfigurations",
		"validatingadmissionpolicies", "validatingadmissionpolicybindings", "validatingwebhookconfigurations"},
	"apiextensions.k8s.io":         {"customresourcedefinitions"},
	"apiregistration.k8s.io":       {"apiservices"},
	"apps":                         {"controllerrevisions", "daemonsets", "deployments", "replicasets", "statefulsets"},
	"authentication.k8s.io":        {"selfsubjectreviews", "tokenreviews"},
	"authorization.k8s.io":         {"localsubjectaccessreviews", "selfsubjectaccessreviews", "selfsubjectrulesreviews", "subjectaccessreviews"},
	"autoscaling":                  {"horizontalpodautoscalers"},
	"batch":                        {"cronjobs", "jobs"},
	"certificates.k8s.io":          {"certificatesigningrequests", "clustertrustbundles"},
	"coordination.k8s.io":          {"leasecandidates", "leases"},
	"discovery.k8s.io":             {"endpointslices"},
	"events.k8s.io":                {"events"},
	"flowcontrol.apiserver.k8s.io": {"flowschemas", "prioritylevelconfigurations"},
	"internal.apiserver.k8s.io":    {"storageversions"},
	"networking.k8s.io":            {"ingressclasses", "ingresses", "ipaddresses", "networkpolicies", "servicecidrs"},
	"node.k8s.io":                  {"runtimeclasses"},
	"policy":                       {"poddisruptionbudgets"},
	"rbac.authorization.k8s.io":    {"clusterrolebindings", "clusterroles", "rolebindings", "roles"},
	"resource.k8s.io":              {"deviceclasses", "resourceclaims", "resourceclaimtemplates", "resourceslices"},
	"scheduling.k8s.io":            {"priorityclasses"},
	"storage.k8s.io":               {"csidrivers", "csinodes", "csistoragecapacities", "storageclasses", "volumeattachments", "volumeattributesclasses"},
	"storagemigration.k8s.io":      {"storageversionmigrations"},
}

// BuiltinResources returns a copy of the table of the standard API groups
// that validation checks resources against when no cluster is asked.
func BuiltinResources() ResourceTable {
	t := make(ResourceTable, len(builtinResources))
	for g, rs := range builtinResources {
		t[g] = slices.Clone(rs)
	}
	return t
}

// notGroups are what people write for the core group, which has no name.
var notGroups = map[string]bool{"core": true, "v1": true, "api": true, "legacy": true}

// removedResources are group/resource pairs the API server no longer serves,
// with where they went and when.
var removedResources = map[string]string{
	"extensions/deployments":         "write apps/deployments (extensions stopped serving it in Kubernetes 1.16)",
	"extensions/daemonsets":          "write apps/daemonsets (extensions stopped serving it in Kubernetes 1.16)",
	"extensions/replicasets":         "write apps/replicasets (extensions stopped serving it in Kubernetes 1.16)",
	"extensions/networkpolicies":     "write networking.k8s.io/networkpolicies (extensions stopped serving it in Kubernetes 1.16)",
	"extensions/podsecuritypolicies": "remove it (PodSecurityPolicy was removed in Kubernetes 1.25)",
	"extensions/ingresses":           "write networking.k8s.io/ingresses (extensions stopped serving it in Kubernetes 1.22)",
	"extensions/*":                   "write the groups its resources moved to, apps and networking.k8s.io (extensions is not served since Kubernetes 1.22)",
	"policy/podsecuritypolicies":     "remove it (PodSecurityPolicy was removed in Kubernetes 1.25)",
}

// resourceProblem checks one resources entry (already syntactically valid)
// against table. It returns an error (the entry matches nothing and the fix
// is known) or a warning (discovered: the table is the cluster's, and a group
// outside the built-in ones is not served there), or neither.
func resourceProblem(entry string, table ResourceTable, discovered bool) (errMsg, warnMsg string) {
	if entry == "*" {
		return "", ""
	}
	group, resource, hasGroup := strings.Cut(entry, "/")
	if !hasGroup {
		group, resource = "", entry
	}
	if notGroups[group] {
		fix := resource
		if resource == "*" {
			return fmt.Sprintf("%q is not an API group: the core group has no name, so core resources are written alone (%q); write \"*\" for every resource of every group", group, "pods"), ""
		}
		if !builtinResources.Has("", resource) {
			if gs := builtinResources.GroupsOf(resource); len(gs) > 0 {
				fix = gs[0] + "/" + resource
			}
		}
		return fmt.Sprintf("%q is not an API group: the core group has no name, so core resources are written alone: write %s", group, fix), ""
	}
	if to, ok := removedResources[group+"/"+resource]; ok {
		return fmt.Sprintf("%s/%s is no longer served and matches nothing: %s", group, resource, to), ""
	}
	if group == "extensions" {
		return fmt.Sprintf("the extensions group is no longer served (since Kubernetes 1.22) and matches nothing; %s", suggestion(resource, "*", table)), ""
	}
	if resource == "*" {
		if _, known := table[group]; !known && discovered && group != "*" && group != "" {
			return "", fmt.Sprintf("the cluster serves no API group %q: the rule matches nothing there until it does", group)
		}
		return "", ""
	}
	if group == "*" {
		if len(table.GroupsOf(resource)) == 0 {
			if discovered {
				return "", fmt.Sprintf("no API group of the cluster serves %q: the rule matches nothing until one does; %s", resource, suggestion(resource, "*", table))
			}
			if s := closest(resource, allResources(builtinResources)); s != "" {
				return "", fmt.Sprintf("no standard API group serves %q (fine for a custom resource); did you mean \"*/%s\"?", resource, s)
			}
		}
		return "", ""
	}
	if _, known := table[group]; !known {
		if discovered {
			return "", fmt.Sprintf("the cluster serves no API group %q: the rule matches nothing there until it does (a CRD installed later is fine)", group)
		}
		return "", ""
	}
	if table.Has(group, resource) {
		return "", ""
	}
	where := "the core group"
	if group != "" {
		where = "API group " + group
	}
	msg := fmt.Sprintf("%s serves no resource %q: %s", where, resource, suggestion(resource, group, table))
	return msg, ""
}

// suggestion says what to write instead of resource in group: the same name
// in another group, or the closest name in the group (or in any group for "*").
func suggestion(resource, group string, table ResourceTable) string {
	if gs := table.GroupsOf(resource); len(gs) > 0 {
		forms := make([]string, 0, len(gs))
		for _, g := range gs {
			if g == "" {
				forms = append(forms, resource)
			} else {
				forms = append(forms, g+"/"+resource)
			}
		}
		return "write " + strings.Join(forms, " or ")
	}
	candidates := table[group]
	if group == "*" {
		candidates = allResources(table)
	}
	if s := closest(resource, candidates); s != "" {
		if group != "*" && group != "" {
			s = group + "/" + s
		} else if group == "*" {
			s = "*/" + s
		}
		return fmt.Sprintf("did you mean %q?", s)
	}
	if group == "*" || len(candidates) == 0 {
		return "check the name with kubectl api-resources"
	}
	return "it serves " + strings.Join(candidates, ", ")
}

func allResources(t ResourceTable) []string {
	seen := map[string]bool{}
	var all []string
	for _, rs := range t {
		for _, r := range rs {
			if !seen[r] {
				seen[r] = true
				all = append(all, r)
			}
		}
	}
	sort.Strings(all)
	return all
}

// closest returns the candidate nearest to s (at most two edits, or s plus or
// minus a plural "s"), or "".
func closest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		d := editDistance(strings.ToLower(s), c)
		if d < bestD || (d == bestD && c < best) {
			best, bestD = c, d
		}
	}
	return best
}

// matchResourceEntries calls visit for every resources entry of every rule
// (budgets, rate limits, flow schemas; match and exclude) with its path.
func matchResourceEntries(s *Spec, spec *field.Path, visit func(entry string, path *field.Path)) {
	each := func(m *Match, p *field.Path) {
		if m == nil {
			return
		}
		for i, r := range m.Resources {
			visit(r, p.Child("resources").Index(i))
		}
	}
	for i := range s.Budgets {
		p := spec.Child("budgets").Index(i)
		each(&s.Budgets[i].Match, p.Child("match"))
		each(s.Budgets[i].Exclude, p.Child("exclude"))
	}
	for i := range s.RateLimits {
		p := spec.Child("rateLimits").Index(i)
		each(&s.RateLimits[i].Match, p.Child("match"))
		each(s.RateLimits[i].Exclude, p.Child("exclude"))
	}
	for i := range s.FlowSchemas {
		each(&s.FlowSchemas[i].Match, spec.Child("flowSchemas").Index(i).Child("match"))
	}
}

// validateResourceNames refuses resources that match nothing in the standard
// API groups (core/pods, v1/pods, extensions/deployments, apps/deploymentz),
// each with what to write instead. Entries validateResource already refuses
// are left to it.
func validateResourceNames(s *Spec, spec *field.Path) field.ErrorList {
	return builtinResourceProblems(s, spec, false)
}

// builtinResourceProblems reports what resourceProblem finds in each
// resources entry of s against the standard API groups: its errors, or with
// warnings its warnings. Entries validateResource refuses are left to it.
func builtinResourceProblems(s *Spec, spec *field.Path, warnings bool) field.ErrorList {
	var problems field.ErrorList
	matchResourceEntries(s, spec, func(r string, p *field.Path) {
		if len(validateResource(r, p)) > 0 {
			return
		}
		msg, warn := resourceProblem(r, builtinResources, false)
		if warnings {
			msg = warn
		}
		if msg != "" {
			problems = append(problems, field.Invalid(p, r, msg))
		}
	})
	return problems
}

// CheckResources checks every resources entry of p against what a cluster
// serves (from discovery). Only what the built-in table cannot know is
// reported, so Validate's own findings are not repeated: a resource missing
// from a non-standard group the cluster serves is an error, a group the
// cluster does not serve (a CRD not installed yet) a warning.
func CheckResources(p *DefenderPolicy, served ResourceTable) (errs, warnings field.ErrorList) {
	spec := field.NewPath("spec")
	matchResourceEntries(&p.Spec, spec, func(r string, path *field.Path) {
		if len(validateResource(r, path)) > 0 {
			return
		}
		if msg, _ := resourceProblem(r, builtinResources, false); msg != "" {
			return // Validate reports it
		}
		group, _, hasGroup := strings.Cut(r, "/")
		if _, builtin := builtinResources[group]; (builtin || !hasGroup) && group != "*" {
			return
		}
		errMsg, warnMsg := resourceProblem(r, served, true)
		if errMsg != "" {
			errs = append(errs, field.Invalid(path, r, errMsg))
		}
		if warnMsg != "" {
			warnings = append(warnings, field.Invalid(path, r, warnMsg))
		}
	})
	return errs, warnings
}

// ResourceProblem says why group/resource names nothing the standard API
// groups serve, with what to write instead ("deployments" is apps/deployments),
// or "" when it is served or cannot be known from the built-in table (a
// group outside the standard ones: a CRD or an aggregated API).
func ResourceProblem(group, resource string) string {
	msg, _ := resourceProblem(ResourceEntry(group, resource, ""), builtinResources, false)
	return msg
}
