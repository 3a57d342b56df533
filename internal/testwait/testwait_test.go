package testwait

import (
	"sync/atomic"
	"testing"
)

func TestUntilReturnsOnceTheConditionHolds(t *testing.T) {
	var polls atomic.Int32
	Until(t, "the third poll", func() bool { return polls.Add(1) >= 3 })
	if got := polls.Load(); got != 3 {
		t.Errorf("cond was polled %d times, want 3 (Until returns as soon as it holds)", got)
	}
}
