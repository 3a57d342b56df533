package webhook

import (
	"context"
	"sync"
	"time"
)

// lazyDeadline is context.WithDeadline(parent, deadline) that builds the
// deadline's timer, and joins parent's cancellation, only when someone asks
// for Done or Err. A store that reads only the deadline (or nothing, as the
// memory store) costs neither a timer nor a child in parent's list, which
// context.WithTimeout spent on every decision; a store that waits on Done
// sees it close exactly when WithDeadline's would (the deadline is
// absolute), and Err says why.
type lazyDeadline struct {
	parent   context.Context
	deadline time.Time
	once     sync.Once
	ctx      context.Context
	cancel   context.CancelFunc
}

var _ context.Context = (*lazyDeadline)(nil)

func newLazyDeadline(parent context.Context, deadline time.Time) *lazyDeadline {
	if d, ok := parent.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return &lazyDeadline{parent: parent, deadline: deadline}
}

func (c *lazyDeadline) start() context.Context {
	c.once.Do(func() { c.ctx, c.cancel = context.WithDeadline(c.parent, c.deadline) })
	return c.ctx
}

// Deadline implements context.Context.
func (c *lazyDeadline) Deadline() (time.Time, bool) { return c.deadline, true }

// Done implements context.Context.
func (c *lazyDeadline) Done() <-chan struct{} { return c.start().Done() }

// Err implements context.Context.
func (c *lazyDeadline) Err() error { return c.start().Err() }

// Value implements context.Context.
func (c *lazyDeadline) Value(key any) any { return c.parent.Value(key) }

// release frees the timer, if one was built; it must be called once the
// context is no longer used, as a CancelFunc is.
func (c *lazyDeadline) release() {
	// Never started: from now on Done and Err report a cancelled context,
	// as WithDeadline's do after its cancel.
	c.once.Do(func() { c.ctx, c.cancel = cancelled, func() {} })
	c.cancel()
}

// cancelled is a context that is done, with context.Canceled.
var cancelled = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()
