package storetest

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
	"pgregory.net/rapid"

	"github.com/kubedefender/kubedefender/limiter"
)

// Agree holds newStore against the memory store: at the bounds of
// validation, and on random valid policies (decisions, reloads, overrides,
// status), both must answer alike to the nanosecond and never panic.
func Agree(t *testing.T, newStore NewStore) {
	t.Run("random batches are judged alike, field by field", func(t *testing.T) { storesMatchOnRandomBatches(t, newStore) })
	t.Run("the stores agree at the bounds of validation", func(t *testing.T) { agreeAtTheBoundsOfValidation(t, newStore) })
	t.Run("random valid policies never crash and both stores decide alike", func(t *testing.T) { randomValidPoliciesDecideAlike(t, newStore) })
}

// storesMatchOnRandomBatches drives a memory store and newStore
// with the same random operations on the same fake clock and wants every
// result field equal: the Lua script is budget.go, line by line. (Since of a
// Closed breaker is compared only while it is not Closed: both stores forget
// an idle key, the memory store at its next Sweep, Redis when the key expires.)
func storesMatchOnRandomBatches(t *testing.T, newStore NewStore) {
	clk := clocktesting.NewFakeClock(Epoch)
	other := newStore(t, clk)
	ms := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk})
	rapid.Check(t, func(rt *rapid.T) {
		specs := DrawSpecs(rt)
		now := clk.Now().Add(24 * time.Hour)
		for i := rapid.IntRange(1, 60).Draw(rt, "ops"); i > 0; i-- {
			// Nanosecond steps too: the Redis store keeps exact nanoseconds.
			now = now.Add(time.Duration(rapid.Int64Range(0, int64(100*time.Second)).Draw(rt, "stepNs")))
			clk.SetTime(now)
			if rapid.IntRange(0, 20).Draw(rt, "reset") == 0 {
				sp := specs[rapid.IntRange(0, len(specs)-1).Draw(rt, "resetRule")]
				key := rapid.SampledFrom([]string{"a", limiter.AllKeys}).Draw(rt, "resetKey")
				if err := ms.ResetBudget(context.Background(), sp, key); err != nil {
					rt.Fatal(err)
				}
				if err := other.ResetBudget(context.Background(), sp, key); err != nil {
					rt.Fatal(err)
				}
				continue
			}
			var checks []limiter.BudgetCheck
			for _, sp := range specs {
				if rapid.Bool().Draw(rt, "matches") {
					checks = append(checks, limiter.BudgetCheck{Spec: sp, Key: rapid.SampledFrom([]string{"a", "b"}).Draw(rt, "key"), Shadow: rapid.IntRange(0, 4).Draw(rt, "shadow") == 0})
				}
			}
			if len(checks) == 0 {
				continue
			}
			commit := rapid.IntRange(0, 5).Draw(rt, "dry") != 0
			mb := &limiter.BudgetBatch{Checks: checks, Commit: commit}
			rb := &limiter.BudgetBatch{Checks: checks, Commit: commit}
			if err := ms.Budgets(context.Background(), mb); err != nil {
				rt.Fatal(err)
			}
			if err := other.Budgets(context.Background(), rb); err != nil {
				rt.Fatal(err)
			}
			if mb.Admitted != rb.Admitted || !mb.Now.Equal(rb.Now) {
				rt.Fatalf("batch: memory admitted=%v now=%v, store admitted=%v now=%v", mb.Admitted, mb.Now, rb.Admitted, rb.Now)
			}
			for k := range mb.Results {
				if m, r := mb.Results[k], rb.Results[k]; !SameResult(m, r) {
					rt.Fatalf("check %d (%s key %s shadow %v commit %v):\nmemory %+v\nstore  %+v", k, checks[k].Spec.ID, checks[k].Key, checks[k].Shadow, commit, m, r)
				}
			}
		}
	})
}

// DrawSpecs draws one to three budget specs of one to three windows (a
// minute and a half apart at most, limits 1 to 4 apart), each without a
// breaker, with a Manual one or with an Auto one, with unique IDs.
func DrawSpecs(rt *rapid.T) []*limiter.BudgetSpec {
	var specs []*limiter.BudgetSpec
	for i := rapid.IntRange(1, 3).Draw(rt, "rules"); i > 0; i-- {
		var ws []limiter.WindowSpec
		length, limit := time.Duration(0), int64(0)
		for j := rapid.IntRange(1, 3).Draw(rt, "windows"); j > 0; j-- {
			length += time.Duration(rapid.IntRange(1, 90).Draw(rt, "lengthS")) * time.Second
			limit += int64(rapid.IntRange(1, 4).Draw(rt, "limitStep"))
			ws = append(ws, limiter.WindowSpec{Length: length, Limit: limit})
		}
		br := limiter.BreakerSpec{}
		switch rapid.IntRange(0, 2).Draw(rt, "breaker") {
		case 1:
			br = limiter.BreakerSpec{Enabled: true, Manual: true}
		case 2:
			br = limiter.BreakerSpec{Enabled: true, Cooldown: time.Duration(rapid.IntRange(1, 120).Draw(rt, "cooldownS")) * time.Second,
				HalfOpenLimit: int64(rapid.IntRange(1, 3).Draw(rt, "halfOpen"))}
		}
		specs = append(specs, Spec(ws, br))
	}
	return specs
}

// SameResult reports whether two stores judged a check alike, field by
// field (Since only while the breaker is not Closed: both stores forget an
// idle key, the memory store at its next Sweep, Redis when the key expires).
func SameResult(m, r limiter.BudgetResult) bool {
	return m.Allowed == r.Allowed && m.Reason == r.Reason && m.Window == r.Window && m.Used == r.Used &&
		m.RetryAfter == r.RetryAfter && m.Prev == r.Prev && m.State == r.State && (m.State == limiter.Closed || m.Since.Equal(r.Since))
}
