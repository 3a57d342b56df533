package limiter

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/limiter/internal/limitertest"
	"github.com/kubedefender/kubedefender/policy"
)

// The store contract itself is in package storetest; these are the few
// helpers this package's own tests share.

// enginePolicy and parse are the shared ones of limitertest.
const enginePolicy = limitertest.EnginePolicy

var parse = limitertest.Parse

var testEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

var specSeq atomic.Int64

// testSpec returns a spec with a unique ID so tests never share state.
func testSpec(windows []WindowSpec, br BreakerSpec) *BudgetSpec {
	n := specSeq.Add(1)
	return &BudgetSpec{Name: fmt.Sprintf("b%d", n), ID: fmt.Sprintf("b%d@test", n), Windows: windows, Breaker: br}
}

// take judges one batch of checks on s and fails the test on an error.
func take(t testing.TB, s Store, commit bool, checks ...BudgetCheck) *BudgetBatch {
	t.Helper()
	b := &BudgetBatch{Checks: checks, Commit: commit}
	if err := s.Budgets(context.Background(), b); err != nil {
		t.Fatalf("Budgets: %v", err)
	}
	if len(b.Results) != len(checks) {
		t.Fatalf("Budgets returned %d results for %d checks", len(b.Results), len(checks))
	}
	return b
}

// setPolicy reloads e with p, both phases, as the policy watcher does.
func setPolicy(t testing.TB, e *Engine, p *policy.Compiled) {
	t.Helper()
	commit, err := e.PreparePolicy(p)
	if err != nil {
		t.Fatalf("PreparePolicy: %v", err)
	}
	commit()
}
