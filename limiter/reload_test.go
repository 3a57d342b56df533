package limiter

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestPreparedPolicyChangesNothingUntilItsCommit: PreparePolicy builds to
// the side — the engine keeps judging with the running policy and no series
// of the new rules appears — and the commit swaps everything at once.
func TestPreparedPolicyChangesNothingUntilItsCommit(t *testing.T) {
	reg := prometheus.NewRegistry()
	e, _ := newTestEngine(t, EngineConfig{Registerer: reg})
	e.DeclareFronts(FrontWebhook)
	ctx := context.Background()
	running := e.Policy()
	tighter := parse(t, strings.Replace(strings.Replace(enginePolicy, "{window: 1m, limit: 3}", "{window: 1m, limit: 1}", 1),
		"name: svc-deletes", "name: cm-deletes", 1))
	commit, err := e.PreparePolicy(tighter)
	if err != nil {
		t.Fatal(err)
	}
	series := func() int {
		t.Helper()
		n, err := testutil.GatherAndCount(reg, "kubedefender_limiter_decisions_total", "kubedefender_limiter_near_limit_total")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := series()
	for i := 0; i < 3; i++ {
		if d := e.Decide(ctx, podDelete("prod", "p")); !d.Allowed {
			t.Fatalf("delete %d after prepare: %s, want the running limit of 3 a minute", i, d.Message)
		}
	}
	if e.Policy() != running || series() != before {
		t.Fatalf("prepare changed what runs: policy %s (running %s), %d series (were %d)", e.Policy().Hash, running.Hash, series(), before)
	}
	commit()
	if e.Policy() != tighter {
		t.Fatal("the commit did not swap the prepared policy in")
	}
	if d := e.Decide(ctx, podDelete("dev", "p")); !d.Allowed {
		t.Fatalf("first delete in dev: %s", d.Message)
	}
	if d := e.Decide(ctx, podDelete("dev", "q")); d.Allowed {
		t.Fatal("second delete in dev admitted: the committed limit is 1 a minute")
	}
	if got := testutil.ToFloat64(e.metrics.decisions.WithLabelValues("webhook", "budget", "cm-deletes", "allowed")); got != 0 {
		t.Fatalf("cm-deletes allowed = %v, want its series at 0", got)
	}
	if _, err := e.PreparePolicy(nil); err == nil {
		t.Fatal("a nil policy was prepared")
	}
}
