package policy

import (
	"slices"

	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// APIVersion and Kind identify a policy document.
const (
	APIVersion = "kubedefender.io/v1alpha1"
	Kind       = "DefenderPolicy"
)

// DefenderPolicy is one policy file. Field names are a contract (DESIGN.md).
type DefenderPolicy struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   ObjectMeta `json:"metadata"`
	Spec       Spec       `json:"spec"`
}

// ObjectMeta is the part of Kubernetes object metadata a policy may carry.
type ObjectMeta struct {
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Spec holds every rule of a policy.
type Spec struct {
	Budgets        []Budget        `json:"budgets,omitempty"`
	RateLimits     []RateLimit     `json:"rateLimits,omitempty"`
	PriorityLevels []PriorityLevel `json:"priorityLevels,omitempty"`
	FlowSchemas    []FlowSchema    `json:"flowSchemas,omitempty"`
	// Concurrency is the number of seats the proxy shares among non-exempt
	// priority levels. Defaulted to 400 when priority levels are given.
	Concurrency int        `json:"concurrency,omitempty"`
	BreakGlass  BreakGlass `json:"breakGlass,omitempty"`
	// Exemptions says which namespaces the exempt label may take out of every
	// budget; nil is the default (see Exemptions).
	Exemptions *Exemptions `json:"exemptions,omitempty"`
}

// ExemptNamespaceLabel on a namespace, with the value "true", takes it out of
// every budget when the policy's exemptions allow it: the webhook
// configuration's namespaceSelector keeps the API server from calling the
// webhook for anything in it. Whoever may patch namespaces may add it, so it
// is as strong as break-glass (without the audit trail of an Override).
const ExemptNamespaceLabel = "kubedefender.io/exempt"

// Exemptions controls the namespace label exemption.
//
// The default (no exemptions field) honours the label on every namespace, as
// earlier releases did: it is the one lever that works while the webhook is
// down or broken, because the API server applies it without calling the
// webhook. Clusters where tenants may patch namespaces should set
// namespaceLabel: false or list the namespaces allowed to carry it.
type Exemptions struct {
	// NamespaceLabel turns the label exemption on (true, the default) or off.
	NamespaceLabel *bool `json:"namespaceLabel,omitempty"`
	// Namespaces, when not empty, are the only namespaces the label exempts;
	// on any other namespace it is ignored.
	Namespaces []string `json:"namespaces,omitempty"`
	// ExcludeNamespaces are never judged by budgets or breakers, at either
	// front: the generated webhook configuration leaves them out, and the
	// proxy skips their budgets and its early breaker reject. Absent means
	// DefaultExcludedNamespaces (kube-system, whose controllers must keep
	// working whatever the guard does); [] excludes none.
	ExcludeNamespaces *[]string `json:"excludeNamespaces,omitempty"`
}

// DefaultExcludedNamespaces returns the namespaces excluded when the policy
// says nothing: kube-system.
func DefaultExcludedNamespaces() []string { return []string{"kube-system"} }

// ExcludedNamespaces returns the namespaces no budget or breaker judges
// (spec.exemptions.excludeNamespaces, or DefaultExcludedNamespaces).
func (s *Spec) ExcludedNamespaces() []string {
	if s.Exemptions == nil || s.Exemptions.ExcludeNamespaces == nil {
		return DefaultExcludedNamespaces()
	}
	return *s.Exemptions.ExcludeNamespaces
}

// Excludes says whether ns is one of ExcludedNamespaces. The namespace object
// itself counts as inside it (as the webhook's namespaceSelector sees it).
func (s *Spec) Excludes(ns string) bool {
	return ns != "" && slices.Contains(s.ExcludedNamespaces(), ns)
}

// NamespaceLabelHonoured says whether ExemptNamespaceLabel exempts anything.
func (s *Spec) NamespaceLabelHonoured() bool {
	return s.Exemptions == nil || s.Exemptions.NamespaceLabel == nil || *s.Exemptions.NamespaceLabel
}

// LabelExemptNamespaces returns the namespaces allowed to carry the exempt
// label; nil means any (when NamespaceLabelHonoured).
func (s *Spec) LabelExemptNamespaces() []string {
	if s.Exemptions == nil {
		return nil
	}
	return s.Exemptions.Namespaces
}

// Mode says whether a rule denies (Enforce) or only counts and reports (Shadow).
type Mode string

// Modes.
const (
	ModeEnforce Mode = "Enforce"
	ModeShadow  Mode = "Shadow"
)

// StoreFailurePolicy says what a rule does when the shared store cannot be reached.
type StoreFailurePolicy string

// Store failure policies.
const (
	// StoreFailureLocal keeps counting in memory, each replica granted its share
	// of every limit.
	StoreFailureLocal StoreFailurePolicy = "Local"
	// StoreFailureAllow admits every request the rule matches.
	StoreFailureAllow StoreFailurePolicy = "Allow"
	// StoreFailureDeny denies every request the rule matches.
	StoreFailureDeny StoreFailurePolicy = "Deny"
)

// Key dimensions a rule may be counted per.
const (
	PerNamespace = "namespace"
	PerUser      = "user"
	PerUserAgent = "userAgent"
)

// Budget is an operation budget over sliding windows; the webhook enforces it.
type Budget struct {
	Name    string `json:"name"`
	Mode    Mode   `json:"mode,omitempty"`
	Match   Match  `json:"match"`
	Exclude *Match `json:"exclude,omitempty"`
	// Per lists the dimensions of the budget key (namespace, user); empty is one
	// cluster-wide budget.
	Per            []string           `json:"per,omitempty"`
	Windows        []Window           `json:"windows"`
	Breaker        *Breaker           `json:"breaker,omitempty"`
	OnStoreFailure StoreFailurePolicy `json:"onStoreFailure,omitempty"`
	// Cascades says how a request that removes many objects is charged:
	// PerObject (the default) charges each delete as the API server admits
	// it; AtRoot charges the root request a client made, up front, one token
	// per object it will remove, and leaves what controllers delete below it
	// free (see limiter.Attributes.Removes and FollowUp).
	Cascades CascadeMode `json:"cascades,omitempty"`
}

// CascadeMode says how a budget charges a request that removes many objects.
type CascadeMode string

// Cascade modes.
const (
	CascadesPerObject CascadeMode = "PerObject"
	CascadesAtRoot    CascadeMode = "AtRoot"
)

// Window is one sliding window of a budget: at most Limit requests in any span
// of length Window.
type Window struct {
	Window Duration `json:"window"`
	Limit  int64    `json:"limit"`
}

// Recovery says how an open breaker closes again.
type Recovery string

// Recoveries.
const (
	RecoveryManual Recovery = "Manual"
	RecoveryAuto   Recovery = "Auto"
)

// Breaker configures the circuit breaker of a budget.
type Breaker struct {
	Recovery      Recovery `json:"recovery,omitempty"`
	Cooldown      Duration `json:"cooldown,omitempty"`
	HalfOpenLimit int64    `json:"halfOpenLimit,omitempty"`
}

// RateLimit is a token bucket per key; the proxy enforces it.
type RateLimit struct {
	Name           string             `json:"name"`
	Mode           Mode               `json:"mode,omitempty"`
	Match          Match              `json:"match"`
	Exclude        *Match             `json:"exclude,omitempty"`
	Per            []string           `json:"per,omitempty"`
	QPS            float64            `json:"qps"`
	Burst          int64              `json:"burst,omitempty"`
	OnStoreFailure StoreFailurePolicy `json:"onStoreFailure,omitempty"`
}

// Match selects requests. Empty fields match anything. See the package doc for
// how fields combine.
type Match struct {
	// Verbs: get, list, watch, create, update, patch, delete, deletecollection,
	// evict (create on pods/eviction), proxy, or "*".
	Verbs []string `json:"verbs,omitempty"`
	// Resources: "pods" (core group), "apps/deployments", "apps/*", "*/deployments", "*".
	Resources  []string `json:"resources,omitempty"`
	Namespaces []string `json:"namespaces,omitempty"`
	Users      []string `json:"users,omitempty"`
	Groups     []string `json:"groups,omitempty"`
	// ServiceAccounts: "namespace/name" or "namespace/*".
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
	// UserAgents are RE2 expressions matched against the User-Agent header.
	UserAgents []string `json:"userAgents,omitempty"`
}

// PriorityLevel is an APF-style concurrency level of the proxy.
type PriorityLevel struct {
	Name             string `json:"name"`
	Exempt           bool   `json:"exempt,omitempty"`
	Shares           int    `json:"shares,omitempty"`
	Queues           int    `json:"queues,omitempty"`
	HandSize         int    `json:"handSize,omitempty"`
	QueueLengthLimit int    `json:"queueLengthLimit,omitempty"`
}

// Distinguishers tell flows apart within a priority level.
const (
	DistinguisherByUser      = "ByUser"
	DistinguisherByNamespace = "ByNamespace"
)

// FlowSchema sends matching requests to a priority level.
type FlowSchema struct {
	Name          string `json:"name"`
	Precedence    int    `json:"precedence"`
	PriorityLevel string `json:"priorityLevel"`
	Distinguisher string `json:"distinguisher,omitempty"`
	Match         Match  `json:"match,omitempty"`
}

// BreakGlass configures overrides.
type BreakGlass struct {
	Namespace   string   `json:"namespace,omitempty"`
	MaxDuration Duration `json:"maxDuration,omitempty"`
}

// CatchAll is the priority level that takes requests no flow schema matches.
const CatchAll = "catch-all"

// Defaults.
const (
	DefaultConcurrency       = 400
	DefaultBreakGlassNS      = "kubedefender-system"
	DefaultMaxDuration       = 4 * time.Hour
	DefaultCooldown          = 10 * time.Minute
	DefaultHalfOpenLimit     = 1
	DefaultQueues            = 64
	DefaultHandSize          = 8
	DefaultQueueLengthLimit  = 50
	DefaultShares            = 1
	DefaultFlowSchemaDistKey = DistinguisherByUser
)

// Duration is a time.Duration written as a Go duration string ("90s", "5m",
// "24h") or with a day suffix ("7d").
type Duration struct {
	time.Duration
}

// ParseDuration parses a Go duration string, also accepting whole days ("7d").
func ParseDuration(s string) (time.Duration, error) {
	d, ok := parseDuration(s)
	if !ok {
		return 0, fmt.Errorf("invalid duration %q: %s", s, durationProblem(s))
	}
	return d, nil
}

// maxDays is the most days a time.Duration holds (about 292 years).
const maxDays = int64(math.MaxInt64 / (24 * time.Hour))

func parseDuration(s string) (time.Duration, bool) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n > maxDays || n < -maxDays {
			return 0, false
		}
		return time.Duration(n) * 24 * time.Hour, true
	}
	d, err := time.ParseDuration(s)
	return d, err == nil
}

// durationProblem says what is wrong with a duration string that does not parse.
func durationProblem(s string) string {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if errors.Is(err, strconv.ErrRange) || (err == nil && (n > maxDays || n < -maxDays)) {
			return fmt.Sprintf("must be at most %dd", maxDays)
		}
		return `days must be a whole number such as "1d" (write "36h" for a day and a half)`
	}
	if weeks, ok := strings.CutSuffix(s, "w"); ok {
		if n, err := strconv.ParseInt(weeks, 10, 64); err == nil && n > 0 && n <= maxDays/7 {
			return fmt.Sprintf(`has no week unit: write "%dd"`, n*7)
		}
	}
	return `must be a duration such as "90s", "5m", "1h" or "1d"`
}

// UnmarshalJSON reads a duration string. A bad one is reported as an
// *json.UnmarshalTypeError so the decoder attaches the field path.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &json.UnmarshalTypeError{Value: string(b), Type: reflect.TypeFor[Duration]()}
	}
	v, ok := parseDuration(s)
	if !ok {
		return &json.UnmarshalTypeError{Value: "string " + strconv.Quote(s), Type: reflect.TypeFor[Duration]()}
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration in its shortest usual form.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(FormatDuration(d.Duration))
}

// FormatDuration writes 24h as "24h", 1m as "1m" and 90s as "1m30s".
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
