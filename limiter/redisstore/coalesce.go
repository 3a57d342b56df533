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
// than maxBudgetGroups script calls in flight) goes to Redis at once, alone:
// one caller waits exactly as long as its own round trip. Decisions that
// arrive while every slot is busy queue, and the next free slot takes up to
// maxGroupCalls of them into one script call, which judges them one after
// the other, each all or nothing, as if each were a call of its own (Redis
// runs a script alone; a later batch sees what an earlier one charged). So
// under load a round trip, and the script's own start (its closures, its
// TIME), is shared by the decisions that wait for it instead of being paid
// by each, and the script's work per decision is what is left. A queued
// decision never waits for a timer: only for a call already in flight.
//
// The call's deadline is the oldest decision's start plus Timeout, so no
// decision waits longer than Timeout for its answer. A decision whose caller
// gives up (its context done) before its answer is read is dropped from the
// answer (its batch is left alone), though Redis may still judge and charge
// it, as a call given up on always could.

const (
	// maxBudgetGroups is how many budget script calls may be in flight at
	// once: enough to keep Redis busy while an answer travels back.
	maxBudgetGroups = 2
	// maxGroupCalls and maxGroupChecks bound one script call.
	maxGroupCalls  = 64
	maxGroupChecks = 512
)

// budgetCall is one Budgets decision on its way through a coalesced call:
// its batch encoded for the script (by the caller, so a caller that gives up
// leaves nothing of its own to read), and its answer.
type budgetCall struct {
	b      *limiter.BudgetBatch
	keys   []string
	packed []byte
	width  int // numbers of an answer that judged the batch
	start  time.Time
	state  atomic.Int32 // callWaiting, callAnswering, callAbandoned
	err    error
	done   chan struct{} // one token when answered
}

const (
	callWaiting int32 = iota
	callAnswering
	callAbandoned
)

// budgetCoalescer queues decisions for the budget script's slots.
type budgetCoalescer struct {
	mu       sync.Mutex
	queue    []*budgetCall
	inflight int
	calls    sync.Pool
}

func (s *RedisStore) getCall() *budgetCall {
	if c, ok := s.coal.calls.Get().(*budgetCall); ok {
		c.keys, c.packed, c.err = c.keys[:0], c.packed[:0], nil
		c.state.Store(callWaiting)
		return c
	}
	return &budgetCall{done: make(chan struct{}, 1)}
}

// encode packs b as the budget script reads one batch (appendBudgetBatch)
// and names its keys.
func (s *RedisStore) encode(c *budgetCall, b *limiter.BudgetBatch) {
	c.b = b
	c.width = 0
	once := b.Once != "" && b.Commit
	c.packed = append(c.packed, byte(boolArg(b.Commit)), byte(boolArg(once)))
	c.packed = binary.LittleEndian.AppendUint64(c.packed, uint64(b.OnceTTL.Milliseconds()))
	c.packed = binary.LittleEndian.AppendUint16(c.packed, uint16(len(b.Checks)))
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
// and waits for its answer or for ctx.
func (s *RedisStore) judge(ctx context.Context, c *budgetCall) error {
	q := &s.coal
	q.mu.Lock()
	if q.inflight < maxBudgetGroups && len(q.queue) == 0 {
		q.inflight++
		q.mu.Unlock()
		group := [1]*budgetCall{c}
		s.runGroup(group[:])
		if next := s.nextGroup(); next != nil {
			go s.drain(next)
		}
	} else {
		q.queue = append(q.queue, c)
		q.mu.Unlock()
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
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queue) == 0 {
		q.inflight--
		return nil
	}
	n, checks := 0, 0
	for n < len(q.queue) && n < maxGroupCalls {
		k := len(q.queue[n].b.Checks)
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
		s.runGroup(group)
		group = s.nextGroup()
	}
}

// runGroup judges the group's batches in one script call and answers each.
func (s *RedisStore) runGroup(group []*budgetCall) {
	a := s.getArgs()
	defer s.putArgs(a)
	a.args = s.nowArgs(a.args)
	a.args = append(a.args, s.ttlFloor)
	a.buf = a.buf[:0]
	oldest := group[0].start
	live := group[:0] // the group is this slot's: filtered in place
	for _, c := range group {
		if c.state.Load() == callAbandoned {
			continue
		}
		if c.start.Before(oldest) {
			oldest = c.start
		}
		a.keys = append(a.keys, c.keys...)
		a.buf = append(a.buf, c.packed...)
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	s.metrics.perCall.Observe(float64(len(live)))
	// a string, not a.buf: a call given up on may still be written by the
	// autopipeliner after a.buf went back to the pool
	a.args = append(a.args, string(a.buf))
	start := s.timers.Now()
	ctx, cancel := context.WithDeadline(context.Background(), oldest.Add(s.timeout))
	// s.client, not the autopipeliner: the group is a batch already
	res, err := s.scripts.budget.Run(ctx, s.client, a.keys, a.args...).Text()
	cancel()
	err = s.done(ctx, opBudgets, start, err)
	p := 0
	for _, c := range live {
		if !c.state.CompareAndSwap(callWaiting, callAnswering) {
			// given up on: skip its answer
			if err == nil {
				p, err = skipBudgets(c, res, p)
			}
			continue
		}
		if err != nil {
			c.err = fmt.Errorf("failed to judge budgets: %w", err)
		} else if p, c.err = s.decodeBudgets(c, res, p); c.err != nil {
			c.err = fmt.Errorf("failed to judge budgets: %w", c.err)
			// the rest cannot be read either
			err = fmt.Errorf("%w: %w", limiter.ErrStoreUnavailable, c.err)
		}
		c.done <- struct{}{}
	}
}
