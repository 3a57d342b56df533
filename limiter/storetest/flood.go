package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter"
)

// Flooded is a store built with MaxKeysPerRule MaxKeys on Clock, with what
// Flood reads of it.
type Flooded struct {
	Store   limiter.Store
	Clock   *clocktesting.FakeClock
	MaxKeys int
	// Keys counts the rate keys the store holds (overflow buckets aside).
	Keys func(t *testing.T) int
	// Sweep forgets idle keys; nil for a store whose keys expire by themselves.
	Sweep func()
}

// Flood checks that rate limits keyed on userAgent (chosen by the client)
// keep at most MaxKeysPerRule keys per rule: new keys of a full rule share
// an overflow bucket, and a client that keeps asking keeps its own bucket
// through a flood of new user agents, sweeps included.
func Flood(t *testing.T, f Flooded) {
	spec := &limiter.RateSpec{Name: "agents", ID: "agents@flood", QPS: 1, Burst: 2, Interval: time.Second}
	ask := func(key string) bool {
		b := &limiter.RateBatch{Checks: []limiter.RateCheck{{Spec: spec, Key: key}}}
		if err := f.Store.Rates(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		return b.Results[0].Allowed
	}
	if !ask("userAgent=kubectl/v1.30") {
		t.Fatal("the real client's first request was denied")
	}
	for round := 0; round < 12; round++ {
		f.Clock.Step(10 * time.Second)
		if f.Sweep != nil {
			f.Sweep()
		}
		flooded := 0
		for i := 0; i < 1000; i++ {
			if ask(fmt.Sprintf("userAgent=flood-%d-%d", round, i)) {
				flooded++
			}
		}
		if flooded > 2*f.MaxKeys+64 {
			t.Fatalf("round %d: %d of 1000 new user agents were admitted, want them limited together (at most a fresh bucket per free slot plus the overflow buckets)", round, flooded)
		}
		if !ask("userAgent=kubectl/v1.30") {
			t.Fatalf("round %d: the real client, asking every 10s at 1 qps, was denied: the flood took its bucket", round)
		}
		if n := f.Keys(t); n > f.MaxKeys {
			t.Fatalf("round %d: the rule holds %d keys, want at most %d", round, n, f.MaxKeys)
		}
	}
}
