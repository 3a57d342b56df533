package policy

import (
	"strings"
	"testing"
	"time"
)

const header = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata:
  name: test
spec:
`

// mustParse parses a policy whose spec is given (indented by two spaces).
func mustParse(t *testing.T, spec string) *Compiled {
	t.Helper()
	return mustParseText(t, header+spec)
}

func TestSetDefaults(t *testing.T) {
	tests := []struct {
		name  string
		spec  string
		check func(t *testing.T, s *Spec)
	}{
		{
			name: "a budget without mode enforces and counts locally when the store is down",
			spec: `  budgets:
  - {name: b, match: {verbs: [delete]}, windows: [{window: 1m, limit: 1}]}
`,
			check: func(t *testing.T, s *Spec) {
				b := s.Budgets[0]
				if b.Mode != ModeEnforce || b.OnStoreFailure != StoreFailureLocal || b.Breaker != nil {
					t.Errorf("got mode %q, onStoreFailure %q, breaker %v", b.Mode, b.OnStoreFailure, b.Breaker)
				}
			},
		},
		{
			name: "an empty breaker is Manual with no cooldown",
			spec: `  budgets:
  - {name: b, match: {verbs: [delete]}, windows: [{window: 1m, limit: 1}], breaker: {}}
`,
			check: func(t *testing.T, s *Spec) {
				br := s.Budgets[0].Breaker
				if br.Recovery != RecoveryManual || br.Cooldown.Duration != 0 || br.HalfOpenLimit != 0 {
					t.Errorf("got %+v", *br)
				}
			},
		},
		{
			name: "an Auto breaker gets the default cooldown and half-open limit",
			spec: `  budgets:
  - {name: b, match: {verbs: [delete]}, windows: [{window: 1m, limit: 1}], breaker: {recovery: Auto}}
`,
			check: func(t *testing.T, s *Spec) {
				br := s.Budgets[0].Breaker
				if br.Cooldown.Duration != DefaultCooldown || br.HalfOpenLimit != DefaultHalfOpenLimit {
					t.Errorf("got %+v", *br)
				}
			},
		},
		{
			name: "a rate limit allows on store failure and bursts one second of qps",
			spec: `  rateLimits:
  - {name: r, match: {verbs: [list]}, qps: 2.5}
`,
			check: func(t *testing.T, s *Spec) {
				r := s.RateLimits[0]
				if r.Mode != ModeEnforce || r.OnStoreFailure != StoreFailureAllow || r.Burst != 3 {
					t.Errorf("got mode %q, onStoreFailure %q, burst %d", r.Mode, r.OnStoreFailure, r.Burst)
				}
			},
		},
		{
			name: "a rate limit under one qps bursts at least one request",
			spec: `  rateLimits:
  - {name: r, match: {verbs: [list]}, qps: 0.1}
`,
			check: func(t *testing.T, s *Spec) {
				if got := s.RateLimits[0].Burst; got != 1 {
					t.Errorf("burst = %d, want 1", got)
				}
			},
		},
		{
			name: "the largest qps gets a burst of one second's worth, within the burst bound",
			spec: `  rateLimits:
  - {name: r, match: {verbs: [list]}, qps: 1e6}
`,
			check: func(t *testing.T, s *Spec) {
				if got := s.RateLimits[0].Burst; got != MaxBurst {
					t.Errorf("burst = %d, want %d", got, MaxBurst)
				}
			},
		},
		{
			name: "an explicit burst is kept",
			spec: `  rateLimits:
  - {name: r, match: {verbs: [list]}, qps: 10, burst: 40, mode: Shadow, onStoreFailure: Deny}
`,
			check: func(t *testing.T, s *Spec) {
				r := s.RateLimits[0]
				if r.Burst != 40 || r.Mode != ModeShadow || r.OnStoreFailure != StoreFailureDeny {
					t.Errorf("got %+v", r)
				}
			},
		},
		{
			name: "a priority level gets queues, hand size and queue length; concurrency defaults",
			spec: `  priorityLevels:
  - {name: exempt, exempt: true}
  - {name: catch-all}
`,
			check: func(t *testing.T, s *Spec) {
				ex, l := s.PriorityLevels[0], s.PriorityLevels[1]
				if ex.Shares != 0 || ex.Queues != 0 || ex.HandSize != 0 || ex.QueueLengthLimit != 0 {
					t.Errorf("exempt level got queueing defaults: %+v", ex)
				}
				if l.Shares != DefaultShares || l.Queues != DefaultQueues || l.HandSize != DefaultHandSize || l.QueueLengthLimit != DefaultQueueLengthLimit {
					t.Errorf("catch-all got %+v", l)
				}
				if s.Concurrency != DefaultConcurrency {
					t.Errorf("concurrency = %d, want %d", s.Concurrency, DefaultConcurrency)
				}
			},
		},
		{
			name: "a hand size defaults to no more than the queues",
			spec: `  priorityLevels:
  - {name: catch-all, queues: 4}
`,
			check: func(t *testing.T, s *Spec) {
				if got := s.PriorityLevels[0].HandSize; got != 4 {
					t.Errorf("handSize = %d, want 4", got)
				}
			},
		},
		{
			name: "a flow schema tells flows apart by user",
			spec: `  priorityLevels:
  - {name: catch-all}
  flowSchemas:
  - {name: f, precedence: 1, priorityLevel: catch-all}
`,
			check: func(t *testing.T, s *Spec) {
				if got := s.FlowSchemas[0].Distinguisher; got != DistinguisherByUser {
					t.Errorf("distinguisher = %q", got)
				}
			},
		},
		{
			name: "without priority levels there is no concurrency; break glass has its namespace and four hours",
			spec: `  budgets: []
`,
			check: func(t *testing.T, s *Spec) {
				if s.Concurrency != 0 {
					t.Errorf("concurrency = %d, want 0 (no queuing)", s.Concurrency)
				}
				if s.BreakGlass.Namespace != DefaultBreakGlassNS || s.BreakGlass.MaxDuration.Duration != DefaultMaxDuration {
					t.Errorf("breakGlass = %+v", s.BreakGlass)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.spec)
			tt.check(t, &c.Policy.Spec)
			// Defaulting twice changes nothing.
			before := hashOf(c.Policy)
			SetDefaults(c.Policy)
			if after := hashOf(c.Policy); after != before {
				t.Errorf("SetDefaults is not idempotent: hash %s then %s", before, after)
			}
		})
	}
}

func TestMatcher(t *testing.T) {
	sa := func(ns, name string) string { return "system:serviceaccount:" + ns + ":" + name }
	tests := []struct {
		name  string
		match Match
		attrs Attributes
		want  bool
	}{
		{name: "an empty match matches anything", match: Match{}, attrs: Attributes{Verb: "get", Resource: "pods"}, want: true},

		{name: "a listed verb matches", match: Match{Verbs: []string{"delete", "evict"}}, attrs: Attributes{Verb: "evict"}, want: true},
		{name: "an unlisted verb does not match", match: Match{Verbs: []string{"delete"}}, attrs: Attributes{Verb: "deletecollection"}, want: false},
		{name: "the verb star matches a verb it has no name for", match: Match{Verbs: []string{"*"}}, attrs: Attributes{Verb: "escalate"}, want: true},
		{name: "an unknown request verb does not match a named verb", match: Match{Verbs: []string{"get"}}, attrs: Attributes{Verb: "escalate"}, want: false},

		{name: "a core resource matches the core group", match: Match{Resources: []string{"pods"}}, attrs: Attributes{Resource: "pods"}, want: true},
		{name: "a core resource does not match the same name in another group", match: Match{Resources: []string{"pods"}}, attrs: Attributes{APIGroup: "metrics.k8s.io", Resource: "pods"}, want: false},
		{name: "group/resource matches that group", match: Match{Resources: []string{"apps/deployments"}}, attrs: Attributes{APIGroup: "apps", Resource: "deployments"}, want: true},
		{name: "group/resource does not match another group", match: Match{Resources: []string{"apps/deployments"}}, attrs: Attributes{APIGroup: "extensions", Resource: "deployments"}, want: false},
		{name: "group/star matches every resource of the group", match: Match{Resources: []string{"apps/*"}}, attrs: Attributes{APIGroup: "apps", Resource: "statefulsets"}, want: true},
		{name: "group/star does not match the core group", match: Match{Resources: []string{"apps/*"}}, attrs: Attributes{Resource: "pods"}, want: false},
		{name: "star/resource matches the resource in any group", match: Match{Resources: []string{"*/deployments"}}, attrs: Attributes{APIGroup: "extensions", Resource: "deployments"}, want: true},
		{name: "star matches any resource", match: Match{Resources: []string{"*"}}, attrs: Attributes{APIGroup: "batch", Resource: "jobs"}, want: true},
		{name: "a subresource request matches its resource", match: Match{Resources: []string{"pods"}}, attrs: Attributes{Resource: "pods", Subresource: "eviction", Verb: "evict"}, want: true},

		{name: "a listed namespace matches", match: Match{Namespaces: []string{"team-a", "team-b"}}, attrs: Attributes{Namespace: "team-b"}, want: true},
		{name: "another namespace does not match", match: Match{Namespaces: []string{"team-a"}}, attrs: Attributes{Namespace: "team-c"}, want: false},
		{name: "a cluster-scoped request does not match listed namespaces", match: Match{Namespaces: []string{"team-a"}}, attrs: Attributes{Resource: "nodes"}, want: false},
		{name: "the namespace star matches cluster-scoped requests too", match: Match{Namespaces: []string{"*"}}, attrs: Attributes{Resource: "nodes"}, want: true},

		{name: "a listed user matches", match: Match{Users: []string{"alice"}}, attrs: Attributes{User: "alice"}, want: true},
		{name: "another user does not match", match: Match{Users: []string{"alice"}}, attrs: Attributes{User: "alicia"}, want: false},
		{name: "any of the request's groups matches", match: Match{Groups: []string{"admins"}}, attrs: Attributes{User: "bob", Groups: []string{"system:authenticated", "admins"}}, want: true},
		{name: "no shared group does not match", match: Match{Groups: []string{"admins"}}, attrs: Attributes{User: "bob", Groups: []string{"devs"}}, want: false},
		{name: "namespace/name matches that service account", match: Match{ServiceAccounts: []string{"kube-system/namespace-controller"}}, attrs: Attributes{User: sa("kube-system", "namespace-controller")}, want: true},
		{name: "namespace/name does not match another service account of the namespace", match: Match{ServiceAccounts: []string{"kube-system/namespace-controller"}}, attrs: Attributes{User: sa("kube-system", "generic-garbage-collector")}, want: false},
		{name: "namespace/star matches every service account of the namespace", match: Match{ServiceAccounts: []string{"kube-system/*"}}, attrs: Attributes{User: sa("kube-system", "generic-garbage-collector")}, want: true},
		{name: "namespace/star does not match a service account of another namespace", match: Match{ServiceAccounts: []string{"kube-system/*"}}, attrs: Attributes{User: sa("kube-public", "default")}, want: false},
		{name: "namespace/star does not match a namespace whose name it prefixes", match: Match{ServiceAccounts: []string{"kube/*"}}, attrs: Attributes{User: sa("kube-system", "default")}, want: false},
		{name: "namespace/star does not match a user who is not a service account", match: Match{ServiceAccounts: []string{"kube-system/*"}}, attrs: Attributes{User: "kube-system:admin"}, want: false},

		{name: "subject fields OR together: the user alone is enough", match: Match{Users: []string{"alice"}, Groups: []string{"admins"}, ServiceAccounts: []string{"ci/*"}}, attrs: Attributes{User: "alice"}, want: true},
		{name: "subject fields OR together: the group alone is enough", match: Match{Users: []string{"alice"}, Groups: []string{"admins"}, ServiceAccounts: []string{"ci/*"}}, attrs: Attributes{User: "bob", Groups: []string{"admins"}}, want: true},
		{name: "subject fields OR together: the service account alone is enough", match: Match{Users: []string{"alice"}, Groups: []string{"admins"}, ServiceAccounts: []string{"ci/*"}}, attrs: Attributes{User: sa("ci", "deployer")}, want: true},
		{name: "subject fields OR together: none of them does not match", match: Match{Users: []string{"alice"}, Groups: []string{"admins"}, ServiceAccounts: []string{"ci/*"}}, attrs: Attributes{User: "carol", Groups: []string{"devs"}}, want: false},
		{name: "other fields AND: right verb, wrong resource does not match", match: Match{Verbs: []string{"delete"}, Resources: []string{"pods"}}, attrs: Attributes{Verb: "delete", Resource: "services"}, want: false},
		{name: "other fields AND: right verb and resource, wrong namespace does not match", match: Match{Verbs: []string{"delete"}, Resources: []string{"pods"}, Namespaces: []string{"prod"}}, attrs: Attributes{Verb: "delete", Resource: "pods", Namespace: "dev"}, want: false},
		{name: "other fields AND: right verb, resource and namespace, wrong subject does not match", match: Match{Verbs: []string{"delete"}, Resources: []string{"pods"}, Users: []string{"alice"}}, attrs: Attributes{Verb: "delete", Resource: "pods", User: "bob"}, want: false},
		{name: "other fields AND: everything right matches", match: Match{Verbs: []string{"delete"}, Resources: []string{"pods"}, Namespaces: []string{"prod"}, Groups: []string{"admins"}}, attrs: Attributes{Verb: "delete", Resource: "pods", Namespace: "prod", User: "bob", Groups: []string{"admins"}}, want: true},

		{name: "an anchored user agent matches its prefix", match: Match{UserAgents: []string{"^kubectl/"}}, attrs: Attributes{UserAgent: "kubectl/v1.32.0 (linux/amd64) kubernetes/abc"}, want: true},
		{name: "an anchored user agent does not match in the middle", match: Match{UserAgents: []string{"^kubectl/"}}, attrs: Attributes{UserAgent: "my-kubectl/v1"}, want: false},
		{name: "an anchored user agent does not match an empty header", match: Match{UserAgents: []string{"^kubectl/"}}, attrs: Attributes{}, want: false},
		{name: "an unanchored user agent matches anywhere", match: Match{UserAgents: []string{"node-agent"}}, attrs: Attributes{UserAgent: "acme node-agent/2.0"}, want: true},
		{name: "a case-insensitive user agent matches other case", match: Match{UserAgents: []string{"(?i)^KUBECTL/"}}, attrs: Attributes{UserAgent: "kubectl/v1.32"}, want: true},
		{name: "a fully anchored user agent matches exactly", match: Match{UserAgents: []string{`^kubectl/v1\.32$`}}, attrs: Attributes{UserAgent: "kubectl/v1.32"}, want: true},
		{name: "a fully anchored user agent does not match a longer header", match: Match{UserAgents: []string{`^kubectl/v1\.32$`}}, attrs: Attributes{UserAgent: "kubectl/v1.32.1"}, want: false},
		{name: "an anchored prefix with a pattern after it checks the pattern", match: Match{UserAgents: []string{`^kubectl/v1\.[0-9]+$`}}, attrs: Attributes{UserAgent: "kubectl/v1.x"}, want: false},
		{name: "an alternation of anchored user agents matches either", match: Match{UserAgents: []string{"^helm/|^argocd/"}}, attrs: Attributes{UserAgent: "argocd/v2.9"}, want: true},
		{name: "a multi-line anchor matches at the start", match: Match{UserAgents: []string{"(?m)^kubectl/"}}, attrs: Attributes{UserAgent: "kubectl/v1"}, want: true},
		{name: "any of several user agents matches", match: Match{UserAgents: []string{"^helm/", "^kubectl/"}}, attrs: Attributes{UserAgent: "kubectl/v1"}, want: true},
		{name: "a literal prefix is compared with its case", match: Match{UserAgents: []string{"^kubectl/"}}, attrs: Attributes{UserAgent: "Kubectl/v1"}, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if errs := validateMatch(&tt.match, nil, knownVerbs, true); len(errs) > 0 {
				t.Fatalf("the match itself is invalid: %v", errs)
			}
			if got := CompileMatch(&tt.match).Matches(&tt.attrs); got != tt.want {
				t.Errorf("Matches(%+v) = %v, want %v", tt.attrs, got, tt.want)
			}
		})
	}
}

func TestRuleExclude(t *testing.T) {
	gc := "system:serviceaccount:kube-system:generic-garbage-collector"
	match := Match{Verbs: []string{"delete"}, Resources: []string{"pods"}}
	tests := []struct {
		name    string
		exclude *Match
		attrs   Attributes
		want    bool
	}{
		{name: "no exclude excludes nothing", exclude: nil, attrs: Attributes{Verb: "delete", Resource: "pods", User: gc}, want: true},
		{name: "an empty exclude excludes nothing", exclude: &Match{}, attrs: Attributes{Verb: "delete", Resource: "pods", User: gc}, want: true},
		{name: "an excluded user skips the rule", exclude: &Match{Users: []string{gc}}, attrs: Attributes{Verb: "delete", Resource: "pods", User: gc}, want: false},
		{name: "an excluded service account skips the rule", exclude: &Match{ServiceAccounts: []string{"kube-system/generic-garbage-collector"}}, attrs: Attributes{Verb: "delete", Resource: "pods", User: gc}, want: false},
		{name: "a user who is not excluded is charged", exclude: &Match{Users: []string{gc}}, attrs: Attributes{Verb: "delete", Resource: "pods", User: "alice"}, want: true},
		{name: "an exclude's fields AND: the excluded user in another namespace is charged", exclude: &Match{Users: []string{gc}, Namespaces: []string{"kube-system"}}, attrs: Attributes{Verb: "delete", Resource: "pods", User: gc, Namespace: "prod"}, want: true},
		{name: "an exclude's fields AND: the excluded user in the excluded namespace skips", exclude: &Match{Users: []string{gc}, Namespaces: []string{"kube-system"}}, attrs: Attributes{Verb: "delete", Resource: "pods", User: gc, Namespace: "kube-system"}, want: false},
		{name: "a request the match does not take is not taken whatever the exclude", exclude: &Match{Users: []string{"bob"}}, attrs: Attributes{Verb: "get", Resource: "pods", User: "alice"}, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := compileRule(&match, tt.exclude)
			if got := r.Applies(&tt.attrs); got != tt.want {
				t.Errorf("Applies(%+v) = %v, want %v", tt.attrs, got, tt.want)
			}
		})
	}
}

func TestFlowSchemaForTakesTheLowestPrecedenceThatMatches(t *testing.T) {
	c := mustParse(t, `  priorityLevels:
  - {name: exempt, exempt: true}
  - {name: system, shares: 30}
  - {name: workload, shares: 20}
  - {name: catch-all, shares: 5}
  flowSchemas:
  - {name: everyone, precedence: 9000, priorityLevel: workload, match: {groups: ["system:authenticated"]}}
  - {name: kube-system, precedence: 500, priorityLevel: system, distinguisher: ByNamespace, match: {serviceAccounts: ["kube-system/*"]}}
  - {name: masters, precedence: 100, priorityLevel: exempt, match: {groups: ["system:masters"]}}
`)
	tests := []struct {
		name  string
		attrs Attributes
		want  string // "" = none: catch-all
	}{
		{name: "a master who is also authenticated goes to the master schema", attrs: Attributes{User: "admin", Groups: []string{"system:authenticated", "system:masters"}}, want: "masters"},
		{name: "a kube-system service account goes to the kube-system schema before everyone", attrs: Attributes{User: "system:serviceaccount:kube-system:deployment-controller", Groups: []string{"system:authenticated"}}, want: "kube-system"},
		{name: "an ordinary user goes to everyone", attrs: Attributes{User: "alice", Groups: []string{"system:authenticated"}}, want: "everyone"},
		{name: "an anonymous request matches nothing and goes to catch-all", attrs: Attributes{User: "system:anonymous", Groups: []string{"system:unauthenticated"}}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if fs := c.FlowSchemaFor(&tt.attrs); fs != nil {
				got = fs.Name
				if c.PriorityLevel(fs.PriorityLevel) == nil {
					t.Errorf("flow schema %s points at a level the policy does not have", fs.Name)
				}
			}
			if got != tt.want {
				t.Errorf("FlowSchemaFor = %q, want %q", got, tt.want)
			}
		})
	}
	if c.PriorityLevel(CatchAll) == nil {
		t.Errorf("PriorityLevel(%q) = nil", CatchAll)
	}
}

func TestHash(t *testing.T) {
	base := header + `  budgets:
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods]}
    windows:
    - {window: 1m, limit: 20}
    - {window: 24h, limit: 1000}
`
	tests := []struct {
		name  string
		other string
		same  bool
	}{
		{name: "the same text hashes the same", other: base, same: true},
		{
			name: "comments, key order and block style do not change the hash",
			other: `# production
kind: DefenderPolicy
apiVersion: kubedefender.io/v1alpha1
metadata: {name: test}
spec:
  budgets:
  - windows:
    - limit: 20
      window: 60s
    - {limit: 1000, window: 1d}
    match:
      resources: [pods]
      verbs: [delete]
    name: pod-deletes
`,
			same: true,
		},
		{
			name: "spelling out the defaults does not change the hash",
			other: base + `    mode: Enforce
    onStoreFailure: Local
  breakGlass: {namespace: kubedefender-system, maxDuration: 4h}
`,
			same: true,
		},
		{name: "another limit changes the hash", other: strings.Replace(base, "limit: 20", "limit: 21", 1), same: false},
		{name: "another mode changes the hash", other: base + "    mode: Shadow\n", same: false},
		{name: "another name changes the hash", other: strings.Replace(base, "name: test", "name: prod", 1), same: false},
	}
	want := mustParseText(t, base).Hash
	if len(want) != 12 {
		t.Errorf("hash %q: want 12 hex digits", want)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustParseText(t, tt.other).Hash
			if (got == want) != tt.same {
				t.Errorf("hash %s vs %s: same = %v, want %v", got, want, got == want, tt.same)
			}
		})
	}
}

// mustParseText parses a whole policy document; an error fails t.
func mustParseText(t *testing.T, text string) *Compiled {
	t.Helper()
	c, err := Parse("test.yaml", []byte(text))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    time.Duration
		wantErr string
	}{
		{name: "a day is 24 hours", in: "1d", want: 24 * time.Hour},
		{name: "a week is written in days", in: "7d", want: 7 * 24 * time.Hour},
		{name: "seconds beyond a minute are kept", in: "90s", want: 90 * time.Second},
		{name: "Go compound durations parse", in: "1h30m", want: 90 * time.Minute},
		{name: "a negative duration parses (validation rejects it)", in: "-5m", want: -5 * time.Minute},
		{name: "negative days parse (validation rejects them)", in: "-1d", want: -24 * time.Hour},
		{name: "the longest day count fits", in: "106751d", want: 106751 * 24 * time.Hour},
		{name: "a day count that overflows is refused", in: "106752d", wantErr: `invalid duration "106752d": must be at most 106751d`},
		{name: "fractional days are refused with a hint", in: "1.5d", wantErr: `invalid duration "1.5d": days must be a whole number such as "1d" (write "36h" for a day and a half)`},
		{name: "a bare d is refused", in: "d", wantErr: `invalid duration "d": days must be a whole number such as "1d" (write "36h" for a day and a half)`},
		{name: "words are refused", in: "5 minutes", wantErr: `invalid duration "5 minutes": must be a duration such as "90s", "5m", "1h" or "1d"`},
		{name: "a number without unit is refused", in: "60", wantErr: `invalid duration "60": must be a duration such as "90s", "5m", "1h" or "1d"`},
		{name: "an empty string is refused", in: "", wantErr: `invalid duration "": must be a duration such as "90s", "5m", "1h" or "1d"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ParseDuration(%q) = %v, %v; want error %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			// What FormatDuration writes parses back to the same value.
			back, err := ParseDuration(FormatDuration(got))
			if err != nil || back != got {
				t.Errorf("FormatDuration(%v) = %q parses back to %v, %v", got, FormatDuration(got), back, err)
			}
		})
	}
}

func TestFormatDurationWritesTheShortUsualForm(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{time.Minute, "1m"}, {24 * time.Hour, "24h"}, {90 * time.Second, "1m30s"}, {90 * time.Minute, "1h30m"}, {0, "0s"}, {-4 * time.Hour, "-4h"},
	}
	for _, tt := range tests {
		t.Run(tt.want+" is written as such", func(t *testing.T) {
			if got := FormatDuration(tt.in); got != tt.want {
				t.Errorf("FormatDuration(%v) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
