package redisstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kubedefender/kubedefender/limiter"
)

// Budget decisions are coalesced. A decision that finds a free slot (fewer
// than maxBudgetGroups script calls in flight) goes to Redis at once, alone,
// under its caller's context: one caller waits exactly as long as its own
// round trip. Decisions that arrive while every slot is busy queue, and the
// next free slot takes up to maxGroupCalls of them into one script call,
// which judges them one after the other, each all or nothing, as if each
// were a call of its own (Redis runs a script alone; a later batch sees what
// an earlier one charged). So under load a round trip, and the script's own
// start (its closures, its TIME), is shared by the decisions that wait for
// it instead of being paid by each, and the script's work per decision is
// what is left. A queued decision never waits for a timer: only for a call
// already in flight.
//
// A slow Redis must not make queued decisions time out: when every slot is
// busy and no call has started for Timeout/4, a decision opens another slot
// (up to slowBudgetGroups) and takes the queue with it.
//
// Each decision waits at most Timeout (its own context's deadline); a shared
// call's deadline is its newest decision's. A decision whose caller gives up
// (its context done) before its answer is read is dropped from the answer
// (its batch is left alone), though Redis may still judge and charge it, as
// a call given up on always could. Only calls count as failures towards the
// store breaker, not decisions that gave up while queued; queued decisions
// are not sent while the breaker is open.

const (
	// maxBudgetGroups is how many budget script calls may be in flight at
	// once: two keep Redis busy while an answer travels back, and let each
	// call take more of the queue than three or four would
	// (BenchmarkRedisStore).
	maxBudgetGroups = 2
	// slowBudgetGroups bounds the calls in flight when Redis is slow.
	slowBudgetGroups = 16
	// maxGroupCalls and maxGroupChecks bound one shared call (a batch of
	// more checks still goes, alone).
	maxGroupCalls  = 64
	maxGroupChecks = 512
)

// budgetCall is one Budgets decision on its way through a coalesced call:
// its batch encoded for the script (by the caller, so a caller that gives up
// leaves nothing of its own to read), and its answer.
type budgetCall struct {
	b        *limiter.BudgetBatch
	keys     []string
	packed   []byte
	checks   int // len(b.Checks)
	width    int // bytes of an answer that judged the batch, after its head
	deadline time.Time
	state    atomic.Int32 // callWaiting, callAnswering, callAbandoned
	err      error
	done     chan struct{} // one token when answered
}

const (
	callWaiting int32 = iota
	callAnswering
	callAbandoned
)

// budgetCoalescer queues decisions for the budget script's slots.
type budgetCoalescer struct {
	mu        sync.Mutex
	queue     []*budgetCall
	inflight  int
	lastStart time.Time // when the newest call started (s.timers)
	calls     sync.Pool
}

func (s *RedisStore) getCall() *budgetCall {
	if c, ok := s.coal.calls.Get().(*budgetCall); ok {
		c.keys, c.packed, c.err = c.keys[:0], c.packed[:0], nil
		c.state.Store(callWaiting)
		return c
	}
	return &budgetCall{done: make(chan struct{}, 1)}
}

// encode packs b as the budget script reads one batch and names its keys.
func (s *RedisStore) encode(c *budgetCall, b *limiter.BudgetBatch) {
	c.b, c.checks, c.width = b, len(b.Checks), 0
	once := b.Once != "" && b.Commit
	c.packed = append(c.packed, byte(boolArg(b.Commit)), byte(boolArg(once)))
	c.packed = binary.LittleEndian.AppendUint64(c.packed, uint64(b.OnceTTL.Milliseconds()))
	c.packed = binary.LittleEndian.AppendUint32(c.packed, uint32(len(b.Checks)))
	for i := range b.Checks {
		ch := &b.Checks[i]
		c.keys = append(c.keys, s.budgetKey(ch.Spec, ch.Key))
		c.packed = appendBudgetCheck(c.packed, ch)
		c.width += answerCheck + answerUsed*len(ch.Spec.Windows)
	}
	if once {
		c.keys = append(c.keys, s.prefix+"{b}:once:"+b.Once)
	}
}

// judge sends c in a call of its own or queues it for the next free slot,
// and waits for its answer or for ctx (which has a deadline).
func (s *RedisStore) judge(ctx context.Context, c *budgetCall) error {
	c.deadline, _ = ctx.Deadline()
	q := &s.coal
	now := s.timers.Now()
	q.mu.Lock()
	if q.inflight >= maxBudgetGroups && (q.inflight >= slowBudgetGroups || now.Sub(q.lastStart) < s.timeout/4) {
		q.queue = append(q.queue, c)
		q.mu.Unlock()
	} else {
		q.inflight++
		q.lastStart = now
		if len(q.queue) == 0 {
			q.mu.Unlock()
			one := [1]*budgetCall{c}
			s.runGroup(ctx, one[:])
		} else {
			// Redis is slow: this new slot takes the queue first
			q.queue = append(q.queue, c)
			group := q.takeLocked()
			q.mu.Unlock()
			s.runGroup(context.Background(), group)
		}
		if next := s.nextGroup(); next != nil {
			go s.drain(next)
		}
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		if c.state.CompareAndSwap(callWaiting, callAbandoned) {
			// the call is the group's now; it is not pooled
			return fmt.Errorf("failed to judge budgets: %w: %w", limiter.ErrStoreUnavailable, ctx.Err())
		}
		<-c.done // being answered: a matter of decoding
	}
	err := c.err
	c.b = nil
	q.calls.Put(c)
	return err
}

// nextGroup takes the next group from the queue for a slot that is free, or
// frees the slot when nothing waits.
func (s *RedisStore) nextGroup() []*budgetCall {
	q := &s.coal
	now := s.timers.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queue) == 0 {
		q.inflight--
		return nil
	}
	q.lastStart = now
	return q.takeLocked()
}

// takeLocked takes the next group from the queue, oldest first: at most
// maxGroupCalls decisions and maxGroupChecks checks (or one bigger batch).
func (q *budgetCoalescer) takeLocked() []*budgetCall {
	n, checks := 0, 0
	for n < len(q.queue) && n < maxGroupCalls {
		k := q.queue[n].checks
		if n > 0 && checks+k > maxGroupChecks {
			break
		}
		checks += k
		n++
	}
	group := make([]*budgetCall, n)
	copy(group, q.queue)
	rest := copy(q.queue, q.queue[n:])
	clear(q.queue[rest:])
	q.queue = q.queue[:rest]
	return group
}

// drain runs groups on one slot until the queue is empty.
func (s *RedisStore) drain(group []*budgetCall) {
	for group != nil {
		s.runGroup(context.Background(), group)
		group = s.nextGroup()
	}
}

// runGroup judges the group's batches in one script call, under ctx (with
// the newest decision's deadline when ctx has none), and answers each.
func (s *RedisStore) runGroup(ctx context.Context, group []*budgetCall) {
	live := group[:0] // the group is this slot's: filtered in place
	var deadline time.Time
	for _, c := range group {
		if c.state.Load() == callAbandoned {
			continue
		}
		if c.deadline.After(deadline) {
			deadline = c.deadline
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	if err := s.allow(); err != nil {
		answerAll(live, err)
		return
	}
	s.metrics.perCall.Observe(float64(len(live)))
	a := s.getArgs()
	defer s.putArgs(a)
	a.args = s.nowArgs(a.args)
	a.args = append(a.args, s.ttlFloor)
	a.buf = a.buf[:0]
	for _, c := range live {
		a.keys = append(a.keys, c.keys...)
		a.buf = append(a.buf, c.packed...)
	}
	// a string, not a.buf: a call given up on may still be written by the
	// client after a.buf went back to the pool
	a.args = append(a.args, string(a.buf))
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	start := s.timers.Now()
	// s.client, not the autopipeliner: the group is a batch already
	res, err := s.scripts.budget.Run(ctx, s.client, a.keys, a.args...).Text()
	if err = s.done(ctx, opBudgets, start, err); err != nil {
		answerAll(live, fmt.Errorf("failed to judge budgets: %w", err))
		return
	}
	if err := walkAnswers(live, res); err != nil {
		answerAll(live, fmt.Errorf("failed to judge budgets: %w: %w", limiter.ErrStoreUnavailable, err))
		return
	}
	p := 0
	for _, c := range live {
		next := p + answerLen(c, res[p])
		if c.state.CompareAndSwap(callWaiting, callAnswering) {
			if err := s.decodeBudgets(c, res, p); err != nil {
				c.err = fmt.Errorf("failed to judge budgets: %w", err)
			}
			c.done <- struct{}{}
		}
		p = next
	}
}

// answerAll answers every decision of a call that went wrong with err.
func answerAll(live []*budgetCall, err error) {
	for _, c := range live {
		if c.state.CompareAndSwap(callWaiting, callAnswering) {
			c.err = err
			c.done <- struct{}{}
		}
	}
}
