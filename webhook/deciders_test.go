package webhook

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// A decider whose engine panicked hands the panic to its request and goes
// on judging the next ones.
func TestDecidersJudgeOnAfterAnEnginePanic(t *testing.T) {
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	decide := func(context.Context) limiter.Decision {
		if calls.Add(1) == 2 {
			panic("boom")
		}
		return limiter.Decision{Allowed: true}
	}
	env := newTestEnv(t, Config{Engine: engineFunc{decide: decide, policy: p}})
	want := []bool{true, false, true, true}
	for i, allowed := range want {
		resp := decodeResponse(t, post(env.h, pods("DELETE", "a", "p1").json(), "application/json"))
		if resp.Allowed != allowed {
			t.Errorf("review %d: allowed %v, want %v (%+v)", i+1, resp.Allowed, allowed, resp.Result)
		}
	}
	if got := calls.Load(); got != int32(len(want)) {
		t.Errorf("the engine judged %d reviews, want %d", got, len(want))
	}
}
