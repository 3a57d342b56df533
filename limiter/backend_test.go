package limiter

import (
	"context"
	"testing"
	"time"
)

func TestMemoryBackendIsOneReplicaThatSweepsUntilCancelled(t *testing.T) {
	b := NewMemoryBackend(MemoryConfig{SweepInterval: time.Hour})
	if _, ok := b.Store.(*MemoryStore); !ok || b.Mode != "memory" || b.Replicas() != 1 {
		t.Fatalf("memory backend: store %T, mode %q, replicas %d; want a *MemoryStore, memory, 1", b.Store, b.Mode, b.Replicas())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	cancel()
	<-done // Run returns once ctx is done
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
