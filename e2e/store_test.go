package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/limiter"
)

// stuckStore is a shared store that never answers: it waits for its context
// to end (a store that honours deadlines, like Redis), or for ever if
// ignoreDeadline is set (a store with a bug).
type stuckStore struct{ ignoreDeadline bool }

func (s stuckStore) wait(ctx context.Context) error {
	if s.ignoreDeadline {
		time.Sleep(time.Hour)
	}
	<-ctx.Done()
	return fmt.Errorf("stuck store: %w: %w", limiter.ErrStoreUnavailable, ctx.Err())
}

func (s stuckStore) Budgets(ctx context.Context, _ *limiter.BudgetBatch) error { return s.wait(ctx) }
func (s stuckStore) Rates(ctx context.Context, _ *limiter.RateBatch) error     { return s.wait(ctx) }
func (s stuckStore) ResetBudget(ctx context.Context, _ *limiter.BudgetSpec, _ string) error {
	return s.wait(ctx)
}
func (s stuckStore) ResetBudgetKeys(ctx context.Context, _ *limiter.BudgetSpec, _ func(string) bool) ([]string, error) {
	return nil, s.wait(ctx)
}
func (s stuckStore) CarryBreakers(ctx context.Context, _, _ *limiter.BudgetSpec) ([]string, error) {
	return nil, s.wait(ctx)
}
func (s stuckStore) Retain(map[string]bool, map[string]*limiter.BudgetSpec) {}
func (s stuckStore) InspectBudget(ctx context.Context, _ *limiter.BudgetSpec, _ int) ([]limiter.BudgetKeyStatus, error) {
	return nil, s.wait(ctx)
}
func (s stuckStore) HottestRates(ctx context.Context, _ *limiter.RateSpec, _ int) ([]limiter.RateKeyStatus, error) {
	return nil, s.wait(ctx)
}

func stuckStoreScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a shared store that never answers but honours deadlines, and a
	// budget of 3 with onStoreFailure: Local
	extra := manualBreaker + "    onStoreFailure: Local\n"
	startDefenderFor(t, cp, "stuck", budgetPolicy("stuck", extra, 3, "1m"), defenderOptions{Store: stuckStore{}})
	const ns = "stuck"
	pods := createPods(t, cp.Client, ns, "web", 4)

	// When 4 pods are deleted
	start := time.Now()
	mustDelete(t, cp.Client, ns, pods[:3]...)
	err := deletePod(context.Background(), cp.Client, ns, pods[3])
	took := time.Since(start)

	// Then each is decided within the webhook's budget by the local fallback:
	// 3 pass and the 4th is denied, and no request waited out timeoutSeconds (3s)
	wantDenied(t, err, 403, "(3/3 used)")
	if took > 4*time.Second {
		t.Errorf("4 deletes took %s, want each within the 500ms decision budget", took)
	}
}

func hungStoreScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a shared store that hangs and ignores its deadline
	startDefenderFor(t, cp, "hung", budgetPolicy("hung", manualBreaker, 1, "1m"), defenderOptions{Store: stuckStore{ignoreDeadline: true}})
	const ns = "hung"
	pods := createPods(t, cp.Client, ns, "web", 2)

	// When kubectl deletes both pods
	start := time.Now()
	_, stderr, err := cp.Kubectl(t, cp.AdminKubeconfig, append([]string{"delete", "pods", "-n", ns, "--wait=false"}, pods...)...)
	took := time.Since(start)

	// Then the webhook cuts the decision off: both are admitted unjudged with a warning, fast
	if err != nil {
		t.Fatalf("kubectl delete: %v: %s", err, stderr)
	}
	if !strings.Contains(stderr, "kubedefender could not judge this request within 500ms; it was admitted without being charged") {
		t.Errorf("kubectl stderr lacks the timeout warning:\n%s", stderr)
	}
	if took > 5*time.Second {
		t.Errorf("kubectl took %s, want each delete answered within the decision budget", took)
	}
	if n := countPods(t, cp.Client, ns); n != 0 {
		t.Errorf("%d pods left, want 0", n)
	}
}
