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
