package redisstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/internal/redistest"
	"github.com/kubedefender/kubedefender/limiter/storetest"
)

// TestStoreBreakerProbesOnItsTimerClock: the breaker around Redis opens
// after FailureThreshold failed calls, refuses at once while open, probes
// every ProbeInterval of its TimerClock (none before), closes on the first
// answer, and counts the time it was open on that clock.
func TestStoreBreakerProbesOnItsTimerClock(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	timers := clocktesting.NewFakeClock(storetest.Epoch)
	s := openStore(t, RedisConfig{URL: srv.URL(), KeyPrefix: "kdtest:breaker:", Timeout: time.Second,
		FailureThreshold: 2, ProbeInterval: 500 * time.Millisecond, TimerClock: timers})
	spec := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 10}}, limiter.BreakerSpec{})
	judge := func() error {
		return s.Budgets(context.Background(), &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: spec, Key: "k"}}, Commit: true})
	}
	if err := judge(); err != nil {
		t.Fatalf("with Redis up: %v", err)
	}
	srv.Kill()
	for i := 0; i < 2; i++ {
		if err := judge(); !errors.Is(err, limiter.ErrStoreUnavailable) {
			t.Fatalf("call %d with Redis down: %v, want ErrStoreUnavailable", i, err)
		}
	}
	if !s.open.Load() || testutil.ToFloat64(s.metrics.state) != 1 {
		t.Fatal("two failed calls did not open the breaker")
	}
	srv.Restart()
	if err := judge(); !errors.Is(err, limiter.ErrStoreUnavailable) {
		t.Fatalf("with the breaker open: %v, want refused at once", err)
	}
	waitFor(t, 5*time.Second, timers.HasWaiters, "the probe to wait on its ticker")
	timers.Step(499 * time.Millisecond)
	if !s.open.Load() {
		t.Fatal("the breaker closed before its first probe was due")
	}
	timers.Step(time.Millisecond)
	waitFor(t, 5*time.Second, func() bool { return !s.open.Load() }, "the first probe to close the breaker")
	if err := judge(); err != nil {
		t.Fatalf("after the probe answered: %v", err)
	}
	if got := s.fallbackSeconds(); got != 0.5 {
		t.Fatalf("fallback seconds = %v, want the 0.5s the breaker was open on its clock", got)
	}
}
