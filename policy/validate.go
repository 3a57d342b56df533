package policy

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// SetDefaults fills in every optional field that has a default.
func SetDefaults(p *DefenderPolicy) {
	s := &p.Spec
	for i := range s.Budgets {
		b := &s.Budgets[i]
		if b.Mode == "" {
			b.Mode = ModeEnforce
		}
		if b.OnStoreFailure == "" {
			b.OnStoreFailure = StoreFailureLocal
		}
		if b.Cascades == "" {
			b.Cascades = CascadesPerObject
		}
		if br := b.Breaker; br != nil {
			if br.Recovery == "" {
				br.Recovery = RecoveryManual
			}
			if br.Recovery == RecoveryAuto {
				if br.Cooldown.Duration == 0 {
					br.Cooldown.Duration = DefaultCooldown
				}
				if br.HalfOpenLimit == 0 {
					br.HalfOpenLimit = DefaultHalfOpenLimit
				}
			}
		}
	}
	for i := range s.RateLimits {
		r := &s.RateLimits[i]
		if r.Mode == "" {
			r.Mode = ModeEnforce
		}
		if r.OnStoreFailure == "" {
			r.OnStoreFailure = StoreFailureAllow
		}
		if r.Burst == 0 {
			// One second's worth of requests, at least 1. Clamped: converting a
			// huge (or NaN) float to int64 is undefined and came out negative.
			burst := math.Ceil(r.QPS)
			switch {
			case !(burst >= 1):
				burst = 1
			case burst > math.MaxInt32:
				burst = math.MaxInt32
			}
			r.Burst = int64(burst)
		}
	}
	for i := range s.PriorityLevels {
		l := &s.PriorityLevels[i]
		if l.Exempt {
			continue
		}
		if l.Shares == 0 {
			l.Shares = DefaultShares
		}
		if l.Queues == 0 {
			l.Queues = DefaultQueues
		}
		if l.HandSize == 0 {
			l.HandSize = min(DefaultHandSize, l.Queues)
		}
		if l.QueueLengthLimit == 0 {
			l.QueueLengthLimit = DefaultQueueLengthLimit
		}
	}
	for i := range s.FlowSchemas {
		if s.FlowSchemas[i].Distinguisher == "" {
			s.FlowSchemas[i].Distinguisher = DefaultFlowSchemaDistKey
		}
	}
	if len(s.PriorityLevels) > 0 && s.Concurrency == 0 {
		s.Concurrency = DefaultConcurrency
	}
	if s.BreakGlass.Namespace == "" {
		s.BreakGlass.Namespace = DefaultBreakGlassNS
	}
	if s.BreakGlass.MaxDuration.Duration == 0 {
		s.BreakGlass.MaxDuration.Duration = DefaultMaxDuration
	}
}

// knownVerbs are the verbs a match may name. evict is create on pods/eviction.
var knownVerbs = []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "evict", "proxy", "*"}

// budgetVerbs are the verbs an admission webhook can charge.
var budgetVerbs = []string{"create", "update", "delete", "deletecollection", "evict", "*"}

// nonCoreResources are resources people write without their group by mistake.
var nonCoreResources = map[string]string{
	"deployments": "apps", "daemonsets": "apps", "statefulsets": "apps", "replicasets": "apps",
	"controllerrevisions": "apps", "jobs": "batch", "cronjobs": "batch", "ingresses": "networking.k8s.io",
	"networkpolicies": "networking.k8s.io", "poddisruptionbudgets": "policy",
	"horizontalpodautoscalers": "autoscaling", "customresourcedefinitions": "apiextensions.k8s.io",
	"roles": "rbac.authorization.k8s.io", "rolebindings": "rbac.authorization.k8s.io",
	"clusterroles": "rbac.authorization.k8s.io", "clusterrolebindings": "rbac.authorization.k8s.io",
	"storageclasses": "storage.k8s.io", "leases": "coordination.k8s.io",
}

// subresources are subresource names that, written as "pods/eviction", would
// read as group "pods" and resource "eviction" and silently match nothing.
var subresources = map[string]bool{
	"status": true, "scale": true, "eviction": true, "binding": true, "log": true, "exec": true,
	"attach": true, "portforward": true, "proxy": true, "ephemeralcontainers": true, "resize": true,
	"finalize": true, "approval": true, "token": true,
}

// dotlessGroups are the built-in API groups without a dot in their name.
var dotlessGroups = map[string]bool{"apps": true, "batch": true, "policy": true, "autoscaling": true, "extensions": true}

// Validate reports every problem of a defaulted policy, each with its field path.
func Validate(p *DefenderPolicy) field.ErrorList {
	var errs field.ErrorList
	spec := field.NewPath("spec")
	s := &p.Spec
	if p.Metadata.Name == "" {
		errs = append(errs, field.Required(field.NewPath("metadata", "name"), "name the policy; it appears in logs and status"))
	}
	for _, msg := range validation.IsDNS1123Subdomain(p.Metadata.Name) {
		if p.Metadata.Name != "" {
			errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), p.Metadata.Name, msg))
		}
	}

	names := map[string]int{}
	for i := range s.Budgets {
		errs = append(errs, validateBudget(&s.Budgets[i], spec.Child("budgets").Index(i), names, i)...)
	}
	names = map[string]int{}
	for i := range s.RateLimits {
		errs = append(errs, validateRateLimit(&s.RateLimits[i], spec.Child("rateLimits").Index(i), names, i)...)
	}
	errs = append(errs, validatePriority(s, spec)...)

	bg := spec.Child("breakGlass")
	for _, msg := range validation.IsDNS1123Label(s.BreakGlass.Namespace) {
		errs = append(errs, field.Invalid(bg.Child("namespace"), s.BreakGlass.Namespace, msg))
	}
	if s.BreakGlass.MaxDuration.Duration < 0 {
		errs = append(errs, field.Invalid(bg.Child("maxDuration"), FormatDuration(s.BreakGlass.MaxDuration.Duration), "must be greater than 0"))
	}
	errs = append(errs, validateResourceNames(s, spec)...)
	errs = append(errs, validateDeadBudgets(s, spec)...)
	errs = append(errs, validateExemptions(s, spec)...)
	return errs
}

func validateName(name string, path *field.Path, seen map[string]int, i int) field.ErrorList {
	var errs field.ErrorList
	if name == "" {
		return append(errs, field.Required(path, "every entry needs a name: it appears in logs, metrics, denials and overrides"))
	}
	for _, msg := range validation.IsDNS1123Subdomain(name) {
		errs = append(errs, field.Invalid(path, name, msg))
	}
	if j, ok := seen[name]; ok {
		// path is list[i].name; name the first holder the same way.
		e := field.Duplicate(path, name)
		list := strings.TrimSuffix(path.String(), fmt.Sprintf("[%d].name", i))
		e.Detail = fmt.Sprintf("also the name of %s[%d]: names must be unique", list, j)
		errs = append(errs, e)
	} else {
		seen[name] = i
	}
	return errs
}

func validateMode(m Mode, path *field.Path) field.ErrorList {
	if m != ModeEnforce && m != ModeShadow {
		return field.ErrorList{field.NotSupported(path, m, []Mode{ModeEnforce, ModeShadow})}
	}
	return nil
}

func validateStoreFailure(f StoreFailurePolicy, path *field.Path) field.ErrorList {
	switch f {
	case StoreFailureLocal, StoreFailureAllow, StoreFailureDeny:
		return nil
	}
	return field.ErrorList{field.NotSupported(path, f, []StoreFailurePolicy{StoreFailureLocal, StoreFailureAllow, StoreFailureDeny})}
}

func validatePer(per []string, allowed []string, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	seen := map[string]bool{}
	for i, d := range per {
		ok := false
		for _, a := range allowed {
			ok = ok || d == a
		}
		if !ok {
			errs = append(errs, field.NotSupported(path.Index(i), d, allowed))
		}
		if seen[d] {
			errs = append(errs, field.Duplicate(path.Index(i), d))
		}
		seen[d] = true
	}
	return errs
}

// ruleFields are the fields every rule (a budget, a rate limit) has, and
// what its kind allows in them; validateRuleFields checks them.
type ruleFields struct {
	Name           string
	Mode           Mode
	Match          *Match
	Exclude        *Match // nil: none
	Per            []string
	OnStoreFailure StoreFailurePolicy

	// MatchVerbs are the verbs Match may name (Exclude may name any).
	MatchVerbs []string
	// UserAgents says whether Match and Exclude may name user agents.
	UserAgents bool
	// PerAllowed are the dimensions Per may list.
	PerAllowed []string
}

// validateRuleFields checks the fields of rule i at path that budgets and
// rate limits share: its name (unique among all rules, by seen), mode,
// match, exclude, per and onStoreFailure.
func validateRuleFields(r ruleFields, path *field.Path, seen map[string]int, i int) field.ErrorList {
	errs := validateName(r.Name, path.Child("name"), seen, i)
	errs = append(errs, validateMode(r.Mode, path.Child("mode"))...)
	errs = append(errs, validateMatch(r.Match, path.Child("match"), r.MatchVerbs, r.UserAgents)...)
	if r.Exclude != nil {
		errs = append(errs, validateMatch(r.Exclude, path.Child("exclude"), knownVerbs, r.UserAgents)...)
	}
	errs = append(errs, validatePer(r.Per, r.PerAllowed, path.Child("per"))...)
	return append(errs, validateStoreFailure(r.OnStoreFailure, path.Child("onStoreFailure"))...)
}

func validateBudget(b *Budget, path *field.Path, seen map[string]int, i int) field.ErrorList {
	errs := validateRuleFields(ruleFields{
		Name: b.Name, Mode: b.Mode, Match: &b.Match, Exclude: b.Exclude, Per: b.Per, OnStoreFailure: b.OnStoreFailure,
		MatchVerbs: budgetVerbs, UserAgents: false, PerAllowed: []string{PerNamespace, PerUser},
	}, path, seen, i)
	errs = append(errs, validateCascades(b, path)...)

	wp := path.Child("windows")
	if len(b.Windows) == 0 {
		errs = append(errs, field.Required(wp, "a budget needs at least one window"))
	}
	if len(b.Windows) > MaxWindows {
		errs = append(errs, field.TooMany(wp, len(b.Windows), MaxWindows))
	}
	for j, w := range b.Windows {
		p := wp.Index(j)
		errs = append(errs, validateDurationUpTo(w.Window.Duration, MaxWindow, p.Child("window"))...)
		if w.Limit <= 0 {
			errs = append(errs, field.Invalid(p.Child("limit"), w.Limit, "must be greater than 0"))
		}
		if j > 0 {
			prev := b.Windows[j-1]
			if w.Window.Duration > 0 && w.Window.Duration <= prev.Window.Duration {
				errs = append(errs, field.Invalid(p.Child("window"), FormatDuration(w.Window.Duration),
					fmt.Sprintf("must be longer than the window before it (%s): list windows from shortest to longest", FormatDuration(prev.Window.Duration))))
			}
			if w.Limit > 0 && w.Limit < prev.Limit {
				errs = append(errs, field.Invalid(p.Child("limit"), w.Limit,
					fmt.Sprintf("must not be smaller than the limit of the shorter window before it (%d), which could then never be reached", prev.Limit)))
			}
		}
	}
	if br := b.Breaker; br != nil {
		bp := path.Child("breaker")
		switch br.Recovery {
		case RecoveryManual:
			if br.Cooldown.Duration != 0 {
				errs = append(errs, field.Invalid(bp.Child("cooldown"), FormatDuration(br.Cooldown.Duration), "must not be set when recovery is Manual, the default (a Manual breaker stays open until an override resets it); set recovery: Auto to close it after a cooldown"))
			}
			if br.HalfOpenLimit != 0 {
				errs = append(errs, field.Invalid(bp.Child("halfOpenLimit"), br.HalfOpenLimit, "must not be set when recovery is Manual, the default; set recovery: Auto to use it"))
			}
		case RecoveryAuto:
			errs = append(errs, validateDurationUpTo(br.Cooldown.Duration, MaxCooldown, bp.Child("cooldown"))...)
			if br.HalfOpenLimit <= 0 {
				errs = append(errs, field.Invalid(bp.Child("halfOpenLimit"), br.HalfOpenLimit, "must be greater than 0"))
			}
		default:
			errs = append(errs, field.NotSupported(bp.Child("recovery"), br.Recovery, []Recovery{RecoveryManual, RecoveryAuto}))
		}
	}
	return errs
}

// validateDurationUpTo checks that d, at path, is greater than 0 and at
// most upTo.
func validateDurationUpTo(d, upTo time.Duration, path *field.Path) field.ErrorList {
	switch {
	case d <= 0:
		return field.ErrorList{field.Invalid(path, FormatDuration(d), "must be greater than 0")}
	case d > upTo:
		return field.ErrorList{field.Invalid(path, FormatDuration(d), atMost(upTo))}
	}
	return nil
}

func validateRateLimit(r *RateLimit, path *field.Path, seen map[string]int, i int) field.ErrorList {
	errs := validateRuleFields(ruleFields{
		Name: r.Name, Mode: r.Mode, Match: &r.Match, Exclude: r.Exclude, Per: r.Per, OnStoreFailure: r.OnStoreFailure,
		MatchVerbs: knownVerbs, UserAgents: true, PerAllowed: []string{PerUser, PerUserAgent, PerNamespace},
	}, path, seen, i)
	// The ranges keep 1/qps and burst/qps exact in both stores (policy/bounds.go).
	if !(r.QPS >= MinQPS && r.QPS <= MaxQPS) {
		errs = append(errs, field.Invalid(path.Child("qps"), r.QPS, fmt.Sprintf("must be between %v and %d", MinQPS, int64(MaxQPS))))
	}
	if r.Burst < 1 || r.Burst > MaxBurst {
		errs = append(errs, field.Invalid(path.Child("burst"), r.Burst, fmt.Sprintf("must be between 1 and %d", MaxBurst)))
	}
	return errs
}

func validateMatch(m *Match, path *field.Path, verbs []string, userAgents bool) field.ErrorList {
	var errs field.ErrorList
	for i, v := range m.Verbs {
		if slices.Contains(verbs, v) {
			continue
		}
		p := path.Child("verbs").Index(i)
		switch v {
		case "get", "list", "watch", "patch", "proxy":
			e := field.NotSupported(p, v, verbs)
			e.Detail += " (budgets are charged by the admission webhook, which sees create, update (patch arrives as update), delete and evict; use a rateLimit for reads)"
			errs = append(errs, e)
		default:
			errs = append(errs, field.NotSupported(p, v, verbs))
		}
	}
	for i, r := range m.Resources {
		errs = append(errs, validateResource(r, path.Child("resources").Index(i))...)
	}
	for i, ns := range m.Namespaces {
		if ns == "*" {
			continue
		}
		for _, msg := range validation.IsDNS1123Label(ns) {
			errs = append(errs, field.Invalid(path.Child("namespaces").Index(i), ns, msg))
		}
	}
	for i, u := range m.Users {
		if u == "" {
			errs = append(errs, field.Invalid(path.Child("users").Index(i), u, "must not be empty"))
		}
	}
	for i, g := range m.Groups {
		if g == "" {
			errs = append(errs, field.Invalid(path.Child("groups").Index(i), g, "must not be empty"))
		}
	}
	for i, sa := range m.ServiceAccounts {
		ns, name, ok := strings.Cut(sa, "/")
		p := path.Child("serviceAccounts").Index(i)
		if !ok {
			errs = append(errs, field.Invalid(p, sa, `must be "namespace/name" or "namespace/*"`))
			continue
		}
		for _, msg := range validation.IsDNS1123Label(ns) {
			errs = append(errs, field.Invalid(p, sa, "namespace: "+msg))
		}
		if name != "*" {
			for _, msg := range validation.IsDNS1123Subdomain(name) {
				errs = append(errs, field.Invalid(p, sa, "name: "+msg))
			}
		}
	}
	for i, ua := range m.UserAgents {
		p := path.Child("userAgents").Index(i)
		if !userAgents {
			errs = append(errs, field.Forbidden(p, "budgets cannot match on userAgents: the admission webhook never sees the User-Agent header"))
			continue
		}
		if _, err := regexp.Compile(ua); err != nil {
			// Quote the failing part: it may hold a newline, and one error is one line.
			detail := strings.TrimPrefix(err.Error(), "error parsing regexp: ")
			var se *syntax.Error
			if errors.As(err, &se) {
				detail = fmt.Sprintf("%s: %q", se.Code, se.Expr)
			}
			errs = append(errs, field.Invalid(p, ua, "must be a valid RE2 regular expression: "+detail))
		}
	}
	return errs
}

func validateResource(r string, path *field.Path) field.ErrorList {
	if r == "*" {
		return nil
	}
	group, resource, hasGroup := strings.Cut(r, "/")
	if !hasGroup {
		group, resource = "", r
	}
	var errs field.ErrorList
	if strings.Contains(resource, "/") || (hasGroup && subresources[resource] && !strings.Contains(group, ".") && !dotlessGroups[group] && group != "*") {
		return append(errs, field.Invalid(path, r, `must be "resource", "group/resource" or "*": subresources are not matched (to budget evictions use the verb evict on pods)`))
	}
	if hasGroup && group != "*" {
		for _, msg := range validation.IsDNS1123Subdomain(group) {
			errs = append(errs, field.Invalid(path, r, "group: "+msg))
		}
	}
	if resource != "*" {
		for _, msg := range validation.IsDNS1123Label(resource) {
			errs = append(errs, field.Invalid(path, r, "resource: "+msg))
		}
	}
	if g, ok := nonCoreResources[resource]; ok && !hasGroup {
		errs = append(errs, field.Invalid(path, r, fmt.Sprintf("%s is not in the core group: write %s/%s (or */%s for any group)", resource, g, resource, resource)))
	}
	return errs
}

func validatePriority(s *Spec, spec *field.Path) field.ErrorList {
	var errs field.ErrorList
	lp := spec.Child("priorityLevels")
	levels := map[string]int{}
	hasCatchAll := false
	for i := range s.PriorityLevels {
		l := &s.PriorityLevels[i]
		p := lp.Index(i)
		errs = append(errs, validateName(l.Name, p.Child("name"), levels, i)...)
		hasCatchAll = hasCatchAll || l.Name == CatchAll
		if l.Exempt {
			if l.Shares != 0 || l.Queues != 0 || l.HandSize != 0 || l.QueueLengthLimit != 0 {
				errs = append(errs, field.Forbidden(p, "an exempt level never queues: shares, queues, handSize and queueLengthLimit must not be set"))
			}
			if l.Name == CatchAll {
				errs = append(errs, field.Invalid(p.Child("exempt"), true, "the catch-all level must not be exempt"))
			}
			continue
		}
		if l.Shares <= 0 {
			errs = append(errs, field.Invalid(p.Child("shares"), l.Shares, "must be greater than 0"))
		}
		if l.Queues <= 0 {
			errs = append(errs, field.Invalid(p.Child("queues"), l.Queues, "must be greater than 0"))
		}
		if l.QueueLengthLimit <= 0 {
			errs = append(errs, field.Invalid(p.Child("queueLengthLimit"), l.QueueLengthLimit, "must be greater than 0"))
		}
		switch {
		case l.HandSize <= 0:
			errs = append(errs, field.Invalid(p.Child("handSize"), l.HandSize, "must be greater than 0"))
		case l.Queues > 0 && l.HandSize > l.Queues:
			errs = append(errs, field.Invalid(p.Child("handSize"), l.HandSize, fmt.Sprintf("must not be greater than queues (%d)", l.Queues)))
		case l.Queues > 0 && entropyBits(l.Queues, l.HandSize) > 60:
			errs = append(errs, field.Invalid(p.Child("handSize"), l.HandSize, fmt.Sprintf("with %d queues needs more than 60 bits of entropy; use a smaller handSize", l.Queues)))
		}
	}
	if len(s.PriorityLevels) > 0 && !hasCatchAll {
		errs = append(errs, field.Required(lp, fmt.Sprintf("a level named %q must exist: requests that no flow schema matches go there (omit priorityLevels entirely to disable queuing)", CatchAll)))
	}
	if len(s.PriorityLevels) == 0 && len(s.FlowSchemas) > 0 {
		errs = append(errs, field.Forbidden(spec.Child("flowSchemas"), "flow schemas need priorityLevels"))
	}
	if s.Concurrency < 0 {
		errs = append(errs, field.Invalid(spec.Child("concurrency"), s.Concurrency, "must be greater than 0"))
	}
	nonExempt := 0
	for _, l := range s.PriorityLevels {
		if !l.Exempt {
			nonExempt++
		}
	}
	if s.Concurrency > 0 && s.Concurrency < nonExempt {
		errs = append(errs, field.Invalid(spec.Child("concurrency"), s.Concurrency, fmt.Sprintf("must be at least the number of non-exempt priority levels (%d): each needs a seat", nonExempt)))
	}

	fp := spec.Child("flowSchemas")
	names := map[string]int{}
	precedences := map[int]int{}
	for i := range s.FlowSchemas {
		f := &s.FlowSchemas[i]
		p := fp.Index(i)
		errs = append(errs, validateName(f.Name, p.Child("name"), names, i)...)
		if f.Precedence < 1 || f.Precedence > 10000 {
			errs = append(errs, field.Invalid(p.Child("precedence"), f.Precedence, "must be between 1 and 10000"))
		} else if j, dup := precedences[f.Precedence]; dup {
			e := field.Duplicate(p.Child("precedence"), f.Precedence)
			e.Detail = fmt.Sprintf("also the precedence of spec.flowSchemas[%d]: precedences must be unique so the order is clear", j)
			errs = append(errs, e)
		} else {
			precedences[f.Precedence] = i
		}
		if _, ok := levels[f.PriorityLevel]; !ok && len(s.PriorityLevels) > 0 {
			e := field.NotFound(p.Child("priorityLevel"), f.PriorityLevel)
			e.Detail = "no priority level has this name; defined: " + strings.Join(levelNames(s.PriorityLevels), ", ")
			errs = append(errs, e)
		}
		if f.Distinguisher != DistinguisherByUser && f.Distinguisher != DistinguisherByNamespace {
			errs = append(errs, field.NotSupported(p.Child("distinguisher"), f.Distinguisher, []string{DistinguisherByUser, DistinguisherByNamespace}))
		}
		errs = append(errs, validateMatch(&f.Match, p.Child("match"), knownVerbs, true)...)
	}
	return errs
}

func levelNames(levels []PriorityLevel) []string {
	names := make([]string, 0, len(levels))
	for _, l := range levels {
		names = append(names, l.Name)
	}
	return names
}

// entropyBits is log2(queues choose handSize)-ish, the bits shuffle sharding
// needs to deal one hand, as the API server computes it.
func entropyBits(queues, handSize int) float64 {
	return float64(handSize) * math.Log2(float64(queues))
}
