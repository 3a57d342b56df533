package override

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// Grant is what `breakglass grant` asks for.
type Grant struct {
	Namespace    string // where the Override goes (breakGlass.namespace)
	Budgets      []string
	RateLimits   []string
	Namespaces   []string // scope
	Users        []string // scope
	For          time.Duration
	Reason       string
	ResetBreaker bool
}

// Validate reports every problem with a grant at once.
func (g *Grant) Validate() error {
	var errs []error
	if len(g.Budgets) == 0 && len(g.RateLimits) == 0 {
		errs = append(errs, errors.New("name what to bypass: --budget NAME or --rate-limit NAME (\"*\" for all)"))
	}
	if g.For <= 0 {
		errs = append(errs, errors.New("--for must be a positive duration, e.g. 30m"))
	}
	if len(strings.TrimSpace(g.Reason)) < 3 {
		errs = append(errs, errors.New(`--reason is required, e.g. --reason "INC-123: drain rack 7"`))
	}
	if g.Namespace == "" {
		errs = append(errs, errors.New("--override-namespace must not be empty"))
	}
	return errors.Join(errs...)
}

// WhoAmI asks the API server who the caller is.
func WhoAmI(ctx context.Context, kube kubernetes.Interface) (string, error) {
	r, err := kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("failed to ask who you are (SelfSubjectReview): %w", err)
	}
	return r.Status.UserInfo.Username, nil
}

// Create writes a grant as a new Override and returns it. Its requestedBy is
// the caller as the API server authenticates them (a SelfSubjectReview): the
// admission policy CreatorPolicy refuses any other name.
func Create(ctx context.Context, dyn dynamic.Interface, kube kubernetes.Interface, g Grant, now time.Time) (*Override, error) {
	if err := g.Validate(); err != nil {
		return nil, err
	}
	who, err := WhoAmI(ctx, kube)
	if err != nil {
		return nil, err
	}
	o := &Override{
		ObjectMeta: metav1.ObjectMeta{Name: overrideName(g), Namespace: g.Namespace,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "kubedefender-breakglass"}},
		Spec: Spec{
			Budgets: g.Budgets, RateLimits: g.RateLimits, Namespaces: g.Namespaces, Users: g.Users,
			ExpiresAt: metav1.NewTime(now.Add(g.For).UTC().Truncate(time.Second)), Reason: g.Reason,
			RequestedBy: who, ResetBreaker: g.ResetBreaker,
		},
	}
	u, err := o.ToUnstructured()
	if err != nil {
		return nil, err
	}
	created, err := dyn.Resource(GVR).Namespace(g.Namespace).Create(ctx, u, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("failed to create override in %s: %w", g.Namespace, err)
	}
	return FromUnstructured(created)
}

// overrideName is readable and unique: bg-<first rule>-<random>.
func overrideName(g Grant) string {
	first := "all"
	switch {
	case len(g.Budgets) > 0 && g.Budgets[0] != "*":
		first = g.Budgets[0]
	case len(g.RateLimits) > 0 && g.RateLimits[0] != "*":
		first = g.RateLimits[0]
	}
	if len(first) > 40 {
		first = first[:40]
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "bg-" + strings.Trim(first, "-.") + "-" + hex.EncodeToString(b[:])
}

// List returns the Overrides of a namespace, newest first.
func List(ctx context.Context, dyn dynamic.Interface, namespace string) ([]*Override, error) {
	l, err := dyn.Resource(GVR).Namespace(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("failed to list overrides in %s: %w", namespace, err)
	}
	out := make([]*Override, 0, len(l.Items))
	for i := range l.Items {
		o, err := FromUnstructured(&l.Items[i])
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreationTimestamp.After(out[j].CreationTimestamp.Time) })
	return out, nil
}

// Revoke deletes an Override.
func Revoke(ctx context.Context, dyn dynamic.Interface, namespace, name string) error {
	if err := dyn.Resource(GVR).Namespace(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("failed to revoke override %s/%s: %w", namespace, name, err)
	}
	return nil
}
