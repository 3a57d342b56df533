package policy

import (
	"regexp"
	"regexp/syntax"
	"sort"
	"strings"
)

// Attributes describe one request as the enforcement points see it.
type Attributes struct {
	// Verb is the Kubernetes verb: get, list, watch, create, update, patch,
	// delete, deletecollection, proxy — or evict for a create on pods/eviction.
	Verb        string
	APIGroup    string
	Resource    string
	Subresource string
	Namespace   string
	Name        string
	User        string
	Groups      []string
	UserAgent   string
	// DryRun requests are judged but take nothing.
	DryRun bool
}

// Verb bits, so that matching a verb is one AND.
const (
	verbGet uint16 = 1 << iota
	verbList
	verbWatch
	verbCreate
	verbUpdate
	verbPatch
	verbDelete
	verbDeleteCollection
	verbEvict
	verbProxy
	verbOther
	verbAll uint16 = 1<<16 - 1
)

func verbBit(v string) uint16 {
	switch v {
	case "get":
		return verbGet
	case "list":
		return verbList
	case "watch":
		return verbWatch
	case "create":
		return verbCreate
	case "update":
		return verbUpdate
	case "patch":
		return verbPatch
	case "delete":
		return verbDelete
	case "deletecollection":
		return verbDeleteCollection
	case "evict":
		return verbEvict
	case "proxy":
		return verbProxy
	case "*":
		return verbAll
	}
	return verbOther
}

type resourcePattern struct {
	group, resource string // "*" matches any
}

// Matcher is a compiled Match. The zero value matches everything.
type Matcher struct {
	verbs      uint16 // 0: any
	resources  []resourcePattern
	namespaces []string
	anyNS      bool
	users      []string
	groups     []string
	saExact    []string // full usernames system:serviceaccount:ns:name
	saNS       []string // "ns" for ns/*
	userAgents []uaPattern
	empty      bool
}

// uaPattern is a compiled userAgents entry. Most are anchored ("^node-agent/"):
// their literal prefix rejects a User-Agent without running the regexp, and a
// pattern that is nothing but an anchored literal never runs it at all.
type uaPattern struct {
	re         *regexp.Regexp
	prefix     string // non-empty: the User-Agent must start with it
	prefixOnly bool   // the prefix test is the whole match
}

func compileUA(p string) uaPattern {
	u := uaPattern{re: regexp.MustCompile(p)}
	s, err := syntax.Parse(p, syntax.Perl)
	if err != nil {
		return u
	}
	s = s.Simplify()
	if s.Op == syntax.OpConcat && len(s.Sub) > 0 && s.Sub[0].Op == syntax.OpBeginText {
		u.prefix, _ = u.re.LiteralPrefix()
		u.prefixOnly = u.prefix != "" && len(s.Sub) == 2 && s.Sub[1].Op == syntax.OpLiteral && s.Sub[1].Flags&syntax.FoldCase == 0
	}
	return u
}

func (u *uaPattern) match(ua string) bool {
	if u.prefix != "" {
		if !strings.HasPrefix(ua, u.prefix) {
			return false
		}
		if u.prefixOnly {
			return true
		}
	}
	return u.re.MatchString(ua)
}

// CompileMatch precompiles a validated Match.
func CompileMatch(m *Match) *Matcher {
	c := &Matcher{}
	for _, v := range m.Verbs {
		c.verbs |= verbBit(v)
	}
	for _, r := range m.Resources {
		if r == "*" {
			c.resources = append(c.resources, resourcePattern{"*", "*"})
			continue
		}
		g, res, ok := strings.Cut(r, "/")
		if !ok {
			g, res = "", r
		}
		c.resources = append(c.resources, resourcePattern{g, res})
	}
	for _, ns := range m.Namespaces {
		if ns == "*" {
			c.anyNS = true
		}
	}
	if !c.anyNS {
		c.namespaces = m.Namespaces
	}
	c.users = m.Users
	c.groups = m.Groups
	for _, sa := range m.ServiceAccounts {
		ns, name, _ := strings.Cut(sa, "/")
		if name == "*" {
			c.saNS = append(c.saNS, ns)
		} else {
			c.saExact = append(c.saExact, serviceAccountPrefix+ns+":"+name)
		}
	}
	for _, ua := range m.UserAgents {
		c.userAgents = append(c.userAgents, compileUA(ua))
	}
	c.empty = c.verbs == 0 && len(c.resources) == 0 && len(c.namespaces) == 0 && !c.anyNS &&
		len(c.users) == 0 && len(c.groups) == 0 && len(c.saExact) == 0 && len(c.saNS) == 0 && len(c.userAgents) == 0
	return c
}

const serviceAccountPrefix = "system:serviceaccount:"

// Empty reports whether the matcher has no conditions (it matches everything).
func (c *Matcher) Empty() bool { return c == nil || c.empty }

// Matches reports whether a request satisfies every condition of the matcher.
// It allocates nothing.
func (c *Matcher) Matches(a *Attributes) bool {
	if c == nil || c.empty {
		return true
	}
	if c.verbs != 0 && c.verbs&verbBit(a.Verb) == 0 {
		return false
	}
	if len(c.resources) > 0 && !c.matchResource(a) {
		return false
	}
	if len(c.namespaces) > 0 && !contains(c.namespaces, a.Namespace) {
		return false
	}
	if !c.matchSubject(a) {
		return false
	}
	if len(c.userAgents) > 0 {
		ok := false
		for i := range c.userAgents {
			if c.userAgents[i].match(a.UserAgent) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func (c *Matcher) matchResource(a *Attributes) bool {
	for _, p := range c.resources {
		if (p.group == "*" || p.group == a.APIGroup) && (p.resource == "*" || p.resource == a.Resource) {
			return true
		}
	}
	return false
}

func (c *Matcher) matchSubject(a *Attributes) bool {
	if len(c.users) == 0 && len(c.groups) == 0 && len(c.saExact) == 0 && len(c.saNS) == 0 {
		return true
	}
	if contains(c.users, a.User) || contains(c.saExact, a.User) {
		return true
	}
	for _, g := range a.Groups {
		if contains(c.groups, g) {
			return true
		}
	}
	if len(c.saNS) > 0 {
		if rest, ok := strings.CutPrefix(a.User, serviceAccountPrefix); ok {
			if ns, _, ok := strings.Cut(rest, ":"); ok && contains(c.saNS, ns) {
				return true
			}
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Rule is a compiled rule's matching part.
type Rule struct {
	Match   *Matcher
	Exclude *Matcher // nil or empty: excludes nothing
}

// Applies reports whether the rule applies: the match matches and the exclude does not.
func (r *Rule) Applies(a *Attributes) bool {
	if !r.Match.Matches(a) {
		return false
	}
	return r.Exclude.Empty() || !r.Exclude.Matches(a)
}

func compileRule(m *Match, ex *Match) Rule {
	r := Rule{Match: CompileMatch(m)}
	if ex != nil {
		r.Exclude = CompileMatch(ex)
	}
	return r
}

// CompiledBudget is a budget with its matchers.
type CompiledBudget struct {
	*Budget
	Rule
}

// CompiledRateLimit is a rate limit with its matchers.
type CompiledRateLimit struct {
	*RateLimit
	Rule
}

// CompiledFlowSchema is a flow schema with its matcher.
type CompiledFlowSchema struct {
	*FlowSchema
	Match *Matcher
}

// Compiled is a validated, defaulted policy with every matcher compiled. It is
// immutable once built and shared by every reader.
type Compiled struct {
	Policy *DefenderPolicy
	// Hash identifies the policy's content (defaulted), the same on every replica.
	Hash        string
	Budgets     []CompiledBudget
	RateLimits  []CompiledRateLimit
	FlowSchemas []CompiledFlowSchema // ascending precedence
}

// compile builds the matchers of a validated, defaulted policy; it cannot fail.
func compile(p *DefenderPolicy) *Compiled {
	c := &Compiled{Policy: p, Hash: hashOf(p)}
	for i := range p.Spec.Budgets {
		b := &p.Spec.Budgets[i]
		c.Budgets = append(c.Budgets, CompiledBudget{Budget: b, Rule: compileRule(&b.Match, b.Exclude)})
	}
	for i := range p.Spec.RateLimits {
		r := &p.Spec.RateLimits[i]
		c.RateLimits = append(c.RateLimits, CompiledRateLimit{RateLimit: r, Rule: compileRule(&r.Match, r.Exclude)})
	}
	for i := range p.Spec.FlowSchemas {
		f := &p.Spec.FlowSchemas[i]
		c.FlowSchemas = append(c.FlowSchemas, CompiledFlowSchema{FlowSchema: f, Match: CompileMatch(&f.Match)})
	}
	sort.SliceStable(c.FlowSchemas, func(i, j int) bool { return c.FlowSchemas[i].Precedence < c.FlowSchemas[j].Precedence })
	return c
}

// FlowSchemaFor returns the first flow schema (by ascending precedence) that
// matches, or nil: such requests go to the catch-all level.
func (c *Compiled) FlowSchemaFor(a *Attributes) *CompiledFlowSchema {
	for i := range c.FlowSchemas {
		if c.FlowSchemas[i].Match.Matches(a) {
			return &c.FlowSchemas[i]
		}
	}
	return nil
}

// PriorityLevel returns the level with the given name, or nil.
func (c *Compiled) PriorityLevel(name string) *PriorityLevel {
	for i := range c.Policy.Spec.PriorityLevels {
		if c.Policy.Spec.PriorityLevels[i].Name == name {
			return &c.Policy.Spec.PriorityLevels[i]
		}
	}
	return nil
}
