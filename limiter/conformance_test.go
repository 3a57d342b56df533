package limiter_test

import (
	"testing"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/storetest"
)

// TestMemoryStoreConformance runs the Store contract on the memory store
// (package redisstore runs it on Redis and holds the two against each other).
func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, func(_ *testing.T, clk *clocktesting.FakeClock) limiter.Store {
		return limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk})
	})
}

// TestMemoryRateKeysAreBoundedAndAFloodNeverStarvesExistingClients:
// storetest.Flood on the memory store, sweeping between rounds.
func TestMemoryRateKeysAreBoundedAndAFloodNeverStarvesExistingClients(t *testing.T) {
	const maxKeys = 64
	clk := clocktesting.NewFakeClock(storetest.Epoch)
	ms := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk, MaxKeysPerRule: maxKeys})
	storetest.Flood(t, storetest.Flooded{Store: ms, Clock: clk, MaxKeys: maxKeys, Sweep: ms.Sweep,
		Keys: func(*testing.T) int { return ms.Stats().RateKeys }})
}
