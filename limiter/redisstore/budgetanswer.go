package redisstore

import (
	"fmt"
	"time"

	"github.com/kubedefender/kubedefender/limiter"
)

// The budget script's answer (budgetLua), read for the decisions of one
// call: walked once for its shape, then decoded into each decision's batch.

// Sizes of the budget script's answer (budgetLua): a batch's head (status,
// nowS, nowNs), the index of a refused key, a check's result before its
// windows, and one window's count.
const (
	answerHead  = 17
	answerIndex = 2
	answerCheck = 29
	answerUsed  = 8
)

// answerLen is the length of an answer whose status is st to c's batch.
func answerLen(c *budgetCall, st byte) int {
	switch st {
	case 2:
		return answerHead
	case 3:
		return answerHead + answerIndex
	}
	return answerHead + c.width
}

// walkAnswers checks that res holds one answer of a known status to each of
// live's batches, and nothing more.
func walkAnswers(live []*budgetCall, res string) error {
	p := 0
	for i, c := range live {
		if len(res) < p+answerHead {
			return fmt.Errorf("script answered %d bytes for %d batches, the %d-th starting at %d", len(res), len(live), i+1, p)
		}
		if st := res[p]; st > 3 {
			return fmt.Errorf("script answered status %d", st)
		}
		p += answerLen(c, res[p])
	}
	if p != len(res) {
		return fmt.Errorf("script answered %d bytes for %d batches, want %d", len(res), len(live), p)
	}
	return nil
}

// decodeBudgets reads c's answer from res at p (walkAnswers checked its
// length): the status, the clamped now and (judged) every check's result.
// An error is this batch's alone: a key the script refused, or more windows
// than a result holds.
func (s *RedisStore) decodeBudgets(c *budgetCall, res string, p int) error {
	b := c.b
	b.Now = time.Unix(le64(res, p+1), le64(res, p+9))
	status := res[p]
	p += answerHead
	switch status {
	case 2:
		b.Repeat, b.Admitted = true, true
		for range b.Checks {
			b.Results = append(b.Results, limiter.BudgetResult{Allowed: true, Window: -1})
		}
		return nil
	case 3:
		i := int(res[p]) | int(res[p+1])<<8
		if i < 1 || i > len(b.Checks) {
			return fmt.Errorf("%w: script refused budget key %d of %d", limiter.ErrStoreUnavailable, i, len(b.Checks))
		}
		ch := &b.Checks[i-1]
		return fmt.Errorf("%w: budget key %s is not in layout version 2", limiter.ErrStoreUnavailable, s.budgetKey(ch.Spec, ch.Key))
	}
	b.Admitted = status == 1
	for i := range b.Checks {
		nw := len(b.Checks[i].Spec.Windows)
		if nw > limiter.MaxWindows {
			b.Results = b.Results[:0]
			return fmt.Errorf("budget %s has %d windows, at most %d fit a result", b.Checks[i].Spec.Name, nw, limiter.MaxWindows)
		}
		r := limiter.BudgetResult{
			Allowed:    res[p] == 1,
			Reason:     limiter.DenyReason(res[p+1]),
			Window:     int(int8(res[p+2])),
			Prev:       limiter.BreakerState(res[p+3]),
			State:      limiter.BreakerState(res[p+4]),
			Since:      time.Unix(le64(res, p+5), le64(res, p+13)),
			RetryAfter: time.Duration(le64(res, p+21)),
		}
		p += answerCheck
		for j := range nw {
			r.Used[j] = le64(res, p)
			p += answerUsed
		}
		b.Results = append(b.Results, r)
	}
	return nil
}

// le64 reads the little-endian int64 at s[p:p+8].
func le64(s string, p int) int64 {
	_ = s[p+7]
	return int64(uint64(s[p]) | uint64(s[p+1])<<8 | uint64(s[p+2])<<16 | uint64(s[p+3])<<24 |
		uint64(s[p+4])<<32 | uint64(s[p+5])<<40 | uint64(s[p+6])<<48 | uint64(s[p+7])<<56)
}
