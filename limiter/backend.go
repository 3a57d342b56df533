package limiter

import "context"

// Backend is a Store with what the process that owns it needs to run it.
// Each kind of store has one constructor returning it whole
// (NewMemoryBackend, redisstore.NewBackend), so serve wires a store without
// asking what it is.
type Backend struct {
	// Store keeps the counters: EngineConfig.Store.
	Store Store
	// Mode names the store for status and logs: "memory" or "redis".
	Mode string
	// Replicas returns how many replicas share Store: EngineConfig.Replicas.
	Replicas func() int
	// Run keeps the store alive until ctx is done (the memory store forgets
	// idle keys; Redis loads its scripts and heartbeats). Call it once, in
	// its own goroutine.
	Run func(ctx context.Context)
	// Close releases the store; call it once, after every decision has been
	// made (after the servers drained). Never nil.
	Close func() error
}

// NewMemoryBackend is a MemoryStore for one replica: Replicas is 1 and Close
// has nothing to release.
func NewMemoryBackend(cfg MemoryConfig) Backend {
	ms := NewMemoryStore(cfg)
	return Backend{
		Store:    ms,
		Mode:     "memory",
		Replicas: func() int { return 1 },
		Run:      ms.Run,
		Close:    func() error { return nil },
	}
}
