package limiter

import "time"

// ring is the admission log of one budget key: unix-nano times, ascending,
// bounded by the longest window. Its capacity is a power of two that grows
// only when full, so steady traffic appends without allocating.
type ring struct {
	buf  []int64
	head int
	n    int
}

func (r *ring) at(i int) int64 { return r.buf[(r.head+i)&(len(r.buf)-1)] }

func (r *ring) newest() int64 {
	if r.n == 0 {
		return 0
	}
	return r.at(r.n - 1)
}

func (r *ring) push(t int64) {
	if r.n == len(r.buf) {
		r.grow(r.n + 1)
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = t
	r.n++
}

// pushN appends k entries at t (a charge of k tokens).
func (r *ring) pushN(t, k int64) {
	if k == 1 {
		r.push(t)
		return
	}
	if r.n+int(k) > len(r.buf) {
		r.grow(r.n + int(k))
	}
	for ; k > 0; k-- {
		r.buf[(r.head+r.n)&(len(r.buf)-1)] = t
		r.n++
	}
}

// grow makes room for at least need entries, keeping a power-of-two size.
func (r *ring) grow(need int) {
	{
		size := max(4, 2*len(r.buf))
		for size < need {
			size *= 2
		}
		buf := make([]int64, size)
		for i := 0; i < r.n; i++ {
			buf[i] = r.at(i)
		}
		r.buf, r.head = buf, 0
	}
}

// dropThrough forgets entries at or before cut.
func (r *ring) dropThrough(cut int64) {
	for r.n > 0 && r.buf[r.head] <= cut {
		r.head = (r.head + 1) & (len(r.buf) - 1)
		r.n--
	}
	if r.n == 0 {
		r.head = 0
		if len(r.buf) > 64 {
			r.buf = nil // an idle key gives its memory back
		}
	}
}

// countAfter returns how many entries are later than cut (binary search).
func (r *ring) countAfter(cut int64) int {
	lo, hi := 0, r.n
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if r.at(mid) <= cut {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return r.n - lo
}

// budgetState is one budget key: its admission log and its breaker.
type budgetState struct {
	log          ring
	state        BreakerState
	since        int64 // unix nanos when state was entered
	halfOpenUsed int64
}

// effective applies the time-driven breaker transitions (Auto recovery) that
// are due at now, without changing st.
func (st *budgetState) effective(spec *BudgetSpec, now int64) (state BreakerState, since, halfOpenUsed int64) {
	state, since, halfOpenUsed = st.state, st.since, st.halfOpenUsed
	if !spec.Breaker.Enabled {
		// A reload removed the breaker (the windows, and so the state, were
		// kept): a breaker that no longer exists denies nothing.
		return Closed, since, 0
	}
	if spec.Breaker.Manual {
		if state == HalfOpen {
			// A reload made an Auto breaker Manual while it was HalfOpen. A
			// Manual breaker has no probation: it is Closed (the windows still
			// judge, and exhaustion opens it until an override closes it).
			return Closed, since, 0
		}
		return
	}
	cd := int64(spec.Breaker.Cooldown)
	if state == Open && now >= since+cd {
		state, since, halfOpenUsed = HalfOpen, since+cd, 0
	}
	if state == HalfOpen && now >= since+cd {
		state, since, halfOpenUsed = Closed, since+cd, 0
	}
	return
}

// idle reports whether the key holds nothing worth keeping at now: no
// admission within the longest window and a closed (or closing) breaker.
func (st *budgetState) idle(spec *BudgetSpec, now int64) bool {
	if st.log.countAfter(now-int64(spec.Longest().Length)) > 0 {
		return false
	}
	state, _, _ := st.effective(spec, now)
	return state == Closed
}

// clampNow keeps time from running backwards for this key: a clock step back
// must not open room that the log says is used.
func (st *budgetState) clampNow(now int64) int64 {
	if n := st.log.newest(); n > now {
		return n
	}
	if st.since > now {
		return st.since
	}
	return now
}

// judge decides one check of cost tokens at now without changing st.
func (st *budgetState) judge(spec *BudgetSpec, now, cost int64) BudgetResult {
	res := BudgetResult{Window: -1, Prev: st.state}
	state, since, used := st.effective(spec, now)
	res.State, res.Since = state, time.Unix(0, since)
	for j, w := range spec.Windows {
		res.Used[j] = int64(st.log.countAfter(now - int64(w.Length)))
	}
	cd := int64(spec.Breaker.Cooldown)
	switch {
	case state == Open:
		res.Reason = BreakerIsOpen
		if !spec.Breaker.Manual {
			res.RetryAfter = time.Duration(since + cd - now)
		}
		return res
	case state == HalfOpen && used >= spec.Breaker.HalfOpenLimit:
		res.Reason = HalfOpenFull
		res.RetryAfter = time.Duration(since + cd - now)
		return res
	}
	var freeAt int64
	for j, w := range spec.Windows {
		if cost <= MaxCost && cost <= w.Limit-res.Used[j] {
			continue
		}
		// The window has room for cost when the (limit-cost+1)-th newest
		// admission leaves it; a cost above the limit never fits, and is
		// told to wait a whole window.
		t := now + int64(w.Length)
		if cost <= w.Limit && cost <= MaxCost {
			t = st.log.at(st.log.n-int(w.Limit-cost+1)) + int64(w.Length)
		}
		if res.Window < 0 || t > freeAt {
			res.Window, freeAt = j, t
		}
	}
	if res.Window < 0 {
		res.Allowed = true
		return res
	}
	res.Reason = WindowExhausted
	res.RetryAfter = time.Duration(freeAt - now)
	if spec.Breaker.Enabled {
		res.State, res.Since = Open, time.Unix(0, now)
		if spec.Breaker.Manual {
			res.RetryAfter = 0
		} else {
			res.RetryAfter = max(res.RetryAfter, spec.Breaker.Cooldown)
		}
	}
	return res
}

// apply commits a judged check: admitted requests take cost tokens from
// every window (a HalfOpen breaker counts one probe request); a window found
// exhausted trips the breaker.
func (st *budgetState) apply(spec *BudgetSpec, now int64, res *BudgetResult, admitted bool, cost int64) {
	st.state, st.since, st.halfOpenUsed = st.effective(spec, now)
	st.log.dropThrough(now - int64(spec.Longest().Length))
	switch {
	case res.Allowed && admitted:
		st.log.pushN(now, cost)
		for j := range spec.Windows {
			res.Used[j] += cost
		}
		if st.state == HalfOpen {
			st.halfOpenUsed++
		}
	case res.Reason == WindowExhausted && spec.Breaker.Enabled:
		st.state, st.since, st.halfOpenUsed = Open, now, 0
	}
}

// rateAllow is GCRA on one key: tat is the theoretical arrival time. It
// returns the new tat and whether the request conforms; a denied request
// leaves tat unchanged and waits retry.
func rateAllow(spec *RateSpec, tat, now int64) (newTat int64, ok bool, retry time.Duration) {
	interval := int64(spec.Interval)
	tat = max(tat, now)
	next := tat + interval
	if diff := next - now - spec.Burst*interval; diff > 0 {
		return tat, false, time.Duration(diff)
	}
	return next, true, 0
}
