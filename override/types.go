package override

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// GVR is the Override resource.
var GVR = schema.GroupVersionResource{Group: "kubedefender.io", Version: "v1alpha1", Resource: "overrides"}

// Kind and APIVersion of an Override.
const (
	Kind       = "Override"
	APIVersion = "kubedefender.io/v1alpha1"
)

// Override is the custom resource.
type Override struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              Spec `json:"spec"`
}

// Spec is what an Override grants.
type Spec struct {
	Budgets      []string    `json:"budgets,omitempty"`
	RateLimits   []string    `json:"rateLimits,omitempty"`
	Namespaces   []string    `json:"namespaces,omitempty"`
	Users        []string    `json:"users,omitempty"`
	ExpiresAt    metav1.Time `json:"expiresAt"`
	Reason       string      `json:"reason"`
	RequestedBy  string      `json:"requestedBy"`
	ResetBreaker bool        `json:"resetBreaker,omitempty"`
}

// FromUnstructured converts an object read through the dynamic client.
func FromUnstructured(u *unstructured.Unstructured) (*Override, error) {
	o := &Override{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, o); err != nil {
		return nil, fmt.Errorf("failed to decode override %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return o, nil
}

// ToUnstructured converts an Override for the dynamic client.
func (o *Override) ToUnstructured() (*unstructured.Unstructured, error) {
	o.APIVersion, o.Kind = APIVersion, Kind
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		return nil, fmt.Errorf("failed to encode override: %w", err)
	}
	return &unstructured.Unstructured{Object: m}, nil
}

// clockSkew is how far expiresAt may exceed maxDuration from creation, for
// clocks that disagree a little.
const clockSkew = time.Minute

// Check tells whether the running policy accepts the override. It returns an
// error that says why not.
func Check(o *Override, p *policy.Compiled) error {
	var errs []error
	bg := p.Policy.Spec.BreakGlass
	if strings.TrimSpace(o.Spec.Reason) == "" {
		errs = append(errs, errors.New("spec.reason is required: say why (e.g. a ticket)"))
	}
	if o.Spec.ExpiresAt.IsZero() {
		errs = append(errs, errors.New("spec.expiresAt is required"))
	} else if created := o.CreationTimestamp.Time; !created.IsZero() {
		if d := o.Spec.ExpiresAt.Sub(created); d > bg.MaxDuration.Duration+clockSkew {
			errs = append(errs, fmt.Errorf("spec.expiresAt is %s after creation, longer than breakGlass.maxDuration (%s)",
				d.Round(time.Second), policy.FormatDuration(bg.MaxDuration.Duration)))
		}
	}
	if len(o.Spec.Budgets) == 0 && len(o.Spec.RateLimits) == 0 {
		errs = append(errs, errors.New("name at least one budget or rate limit"))
	}
	var budgets, rates []string
	for _, b := range p.Budgets {
		budgets = append(budgets, b.Name)
	}
	for _, r := range p.RateLimits {
		rates = append(rates, r.Name)
	}
	for _, n := range o.Spec.Budgets {
		if n != "*" && !slices.Contains(budgets, n) {
			errs = append(errs, fmt.Errorf("spec.budgets: the policy has no budget %q (it has: %s)", n, strings.Join(budgets, ", ")))
		}
	}
	for _, n := range o.Spec.RateLimits {
		if n != "*" && !slices.Contains(rates, n) {
			errs = append(errs, fmt.Errorf("spec.rateLimits: the policy has no rate limit %q (it has: %s)", n, strings.Join(rates, ", ")))
		}
	}
	return errors.Join(errs...)
}

// Limiter returns the engine's view of the override.
func (o *Override) Limiter() limiter.Override {
	return limiter.Override{
		Name: o.Name, Namespace: o.Namespace,
		Budgets: o.Spec.Budgets, RateLimits: o.Spec.RateLimits,
		Namespaces: o.Spec.Namespaces, Users: o.Spec.Users,
		ExpiresAt: o.Spec.ExpiresAt.Time, Reason: o.Spec.Reason, RequestedBy: o.Spec.RequestedBy,
		ResetBreaker: o.Spec.ResetBreaker,
	}
}

// Targets describes what the override bypasses, for logs and tables.
func (o *Override) Targets() string {
	return joinLists(namedList{"budgets", o.Spec.Budgets}, namedList{"rateLimits", o.Spec.RateLimits})
}

// Scope describes the narrowing of the override, for logs and tables.
func (o *Override) Scope() string {
	if s := joinLists(namedList{"namespaces", o.Spec.Namespaces}, namedList{"users", o.Spec.Users}); s != "" {
		return s
	}
	return "all"
}

// namedList is a list of names and what they name ("budgets").
type namedList struct {
	what  string
	names []string
}

// joinLists writes each non-empty list as its what and its names
// ("budgets a,b"), the lists joined with "; ".
func joinLists(lists ...namedList) string {
	var parts []string
	for _, l := range lists {
		if len(l.names) > 0 {
			parts = append(parts, l.what+" "+strings.Join(l.names, ","))
		}
	}
	return strings.Join(parts, "; ")
}
