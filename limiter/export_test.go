package limiter

// Test-only views of production types, visible to this package's tests and
// to package limiter_test.

// MemoryStats counts what a MemoryStore holds.
type MemoryStats struct {
	BudgetKeys int
	RateKeys   int
	// Overflowed counts requests judged on a rule's shared overflow key because
	// the rule was full.
	Overflowed int64
}

// Stats counts the keys held.
func (s *MemoryStore) Stats() MemoryStats {
	st := MemoryStats{Overflowed: s.overflow.Load()}
	s.mu.Lock()
	for _, t := range s.budgets {
		st.BudgetKeys += len(t.keys)
	}
	s.mu.Unlock()
	s.rmu.RLock()
	defer s.rmu.RUnlock()
	for _, t := range s.rates {
		for i := range t.shards {
			t.shards[i].mu.Lock()
			st.RateKeys += len(t.shards[i].tat)
			t.shards[i].mu.Unlock()
		}
	}
	return st
}
