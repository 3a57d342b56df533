package replay

import (
	"math"
	"sort"
	"strings"
	"time"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// Report is what a replay found. Its JSON form (-o json) is a stable
// contract documented in docs/choosing-limits.md: fields are added, never renamed.
type Report struct {
	// Events counts the requests replayed: one per auditID.
	Events int `json:"events"`
	// From and To are the first and last requestReceivedTimestamp replayed.
	From  time.Time     `json:"from"`
	To    time.Time     `json:"to"`
	Rules []*RuleReport `json:"rules"`
	// FlowSchemas counts the requests each flow schema would have classified
	// (the proxy's priority levels; empty when the policy has none).
	FlowSchemas []FlowSchemaReport `json:"flowSchemas,omitempty"`
	// DeleteCollections says how each deletecollection was counted: by the
	// items of its response body, or as one when the log has no body.
	DeleteCollections DeleteCollections `json:"deleteCollections"`
	// Skipped counts the input lines skipped; Problems lists the first of them.
	Skipped  int       `json:"skipped"`
	Problems []Problem `json:"problems,omitempty"`
	// Late counts events that arrived after requests received later had
	// been judged (more out of order than the reorder delay): not replayed.
	Late int `json:"late"`

	states map[string]*ruleState
}

// DeleteCollections counts deletecollection requests by how they were charged.
type DeleteCollections struct {
	WithBody    int `json:"withBody"`
	Items       int `json:"items"`
	WithoutBody int `json:"withoutBody"`
}

// FlowSchemaReport counts the requests one flow schema matched.
type FlowSchemaReport struct {
	Name          string `json:"name"`
	PriorityLevel string `json:"priorityLevel"`
	Matched       int64  `json:"matched"`
}

// RuleReport is what one rule would have done.
type RuleReport struct {
	Name string `json:"name"`
	// Kind is "budget" or "rateLimit".
	Kind string `json:"kind"`
	Mode string `json:"mode"`
	// Matched counts the checks the rule made: requests for rate limits,
	// admission checks for budgets (one per item of a deletecollection).
	Matched int64 `json:"matched"`
	// Denied counts the checks the rule would have denied (Shadow rules:
	// would have denied had they enforced).
	Denied       int64   `json:"denied"`
	FirstDenied  *Denial `json:"firstDenied"`
	LastDenied   *Denial `json:"lastDenied"`
	BreakerTrips []Trip  `json:"breakerTrips"`
	TopKeys      []Count `json:"topKeys"`
	TopUsers     []Count `json:"topUsers"`
	TopUserAgent []Count `json:"topUserAgents"`
	Peaks        []Peak  `json:"peaks"`
}

// Denial is one would-be denial.
type Denial struct {
	At      time.Time  `json:"at"`
	Key     string     `json:"key"`
	Request RequestRef `json:"request"`
}

// RequestRef names the request behind a denial or a trip.
type RequestRef struct {
	AuditID   string `json:"auditID"`
	Verb      string `json:"verb"`
	Resource  string `json:"resource,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	User      string `json:"user"`
	UserAgent string `json:"userAgent,omitempty"`
	// Code is the status the API server answered with in the log.
	Code int `json:"code,omitempty"`
	// Source is the file:line of the event.
	Source string `json:"source"`
}

// Trip is a breaker moving to Open.
type Trip struct {
	At      time.Time  `json:"at"`
	Key     string     `json:"key"`
	From    string     `json:"from"`
	Request RequestRef `json:"request"`
}

// Count is a value and how often it was denied.
type Count struct {
	Value string `json:"value"`
	Count int64  `json:"count"`
}

// Peak is the busiest moment of one window. Used counts what the key asked
// of the window had nothing been denied, so it may exceed Limit: that is
// how far over the limit the cluster went. For a rate limit the window is
// 1s and Limit is burst + qps, the most a bucket admits in one second.
type Peak struct {
	Window string    `json:"window"`
	Key    string    `json:"key"`
	Used   int64     `json:"used"`
	Limit  int64     `json:"limit"`
	At     time.Time `json:"at"`
}

// Bounds on what a report keeps per rule.
const (
	maxCounted  = 10000 // distinct keys, users, user agents counted
	maxTop      = 5
	maxTrips    = 1000
	maxMarks    = 2000 // denials kept for the chart
	chartKeys   = 8    // keys whose series are kept
	seriesLen   = 256  // points per series before they are merged
	rateWindow  = time.Second
	otherBucket = "(others)"
)

type point struct {
	t    int64
	used [limiter.MaxWindows]int64
}

// series is a key's usage over time, bounded: when full, neighbours merge
// (keeping the larger value) and each point covers twice the time.
type series struct {
	key   string
	peak  int64 // the largest fraction of a limit seen, in ppm
	width int64
	pts   []point
}

func (s *series) add(t int64, used []int64) {
	if n := len(s.pts); n > 0 && t/s.width == s.pts[n-1].t/s.width {
		p := &s.pts[n-1]
		for j, u := range used {
			p.used[j] = max(p.used[j], u)
		}
		return
	}
	var p point
	p.t = t
	copy(p.used[:], used)
	s.pts = append(s.pts, p)
	if len(s.pts) < seriesLen {
		return
	}
	s.width *= 2
	out := s.pts[:0]
	for _, p := range s.pts {
		if n := len(out); n > 0 && p.t/s.width == out[n-1].t/s.width {
			q := &out[n-1]
			for j := range q.used {
				q.used[j] = max(q.used[j], p.used[j])
			}
			continue
		}
		out = append(out, p)
	}
	s.pts = out
}

type peakState struct {
	used int64
	key  string
	at   time.Time
}

type ruleState struct {
	rep     *RuleReport
	windows []time.Duration
	limits  []int64
	peaks   []peakState
	keys    map[string]int64
	users   map[string]int64
	uas     map[string]int64
	charts  []*series
	marks   []mark
	// rate limits: the requests of each key within the last second
	rate   *policy.RateLimit
	recent map[string]*recent
}

type mark struct {
	t    int64
	key  string
	trip bool
}

type recent struct {
	times []int64
}

func newRuleState(kind limiter.RuleKind, name, mode string, ws []policy.Window) *ruleState {
	rs := &ruleState{
		rep:  &RuleReport{Name: name, Kind: kind.String(), Mode: mode, BreakerTrips: []Trip{}},
		keys: map[string]int64{}, users: map[string]int64{}, uas: map[string]int64{},
	}
	for _, w := range ws {
		rs.windows = append(rs.windows, w.Window.Duration)
		rs.limits = append(rs.limits, w.Limit)
	}
	rs.peaks = make([]peakState, len(rs.windows))
	return rs
}

func newRateState(r *policy.RateLimit) *ruleState {
	limit := r.Burst + int64(math.Floor(r.QPS))
	rs := newRuleState(limiter.KindRateLimit, r.Name, string(r.Mode), []policy.Window{{Window: policy.Duration{Duration: rateWindow}, Limit: limit}})
	rs.rate = r
	rs.recent = map[string]*recent{}
	return rs
}

func bump(m map[string]int64, v string) {
	if _, ok := m[v]; !ok && len(m) >= maxCounted {
		v = otherBucket
	} else if !ok {
		v = strings.Clone(v)
	}
	m[v]++
}

func (rs *ruleState) deny(d Denial) {
	d.Key = strings.Clone(d.Key)
	rs.rep.Denied++
	if rs.rep.FirstDenied == nil {
		first := d
		rs.rep.FirstDenied = &first
	}
	last := d
	rs.rep.LastDenied = &last
	bump(rs.keys, d.Key)
	bump(rs.users, d.Request.User)
	bump(rs.uas, d.Request.UserAgent)
	if len(rs.marks) < maxMarks {
		rs.marks = append(rs.marks, mark{t: d.At.UnixNano(), key: d.Key})
	}
}

func (rs *ruleState) trip(t Trip) {
	t.Key = strings.Clone(t.Key)
	if len(rs.rep.BreakerTrips) < maxTrips {
		rs.rep.BreakerTrips = append(rs.rep.BreakerTrips, t)
	}
	rs.marks = append(rs.marks, mark{t: t.At.UnixNano(), key: t.Key, trip: true})
}

// observe records what a key's windows hold after a charge (demand).
func (rs *ruleState) observe(now time.Time, key string, used []int64) {
	var frac int64
	for j, u := range used {
		if p := &rs.peaks[j]; u > p.used {
			p.used, p.at = u, now
			if p.key != key {
				p.key = strings.Clone(key)
			}
		}
		frac = max(frac, u*1e6/rs.limits[j])
	}
	t := now.UnixNano()
	for _, s := range rs.charts {
		if s.key == key {
			s.add(t, used)
			s.peak = max(s.peak, frac)
			return
		}
	}
	if len(rs.charts) < chartKeys {
		s := &series{key: strings.Clone(key), width: int64(time.Second), peak: frac}
		s.add(t, used)
		rs.charts = append(rs.charts, s)
		return
	}
	// A key busier than the quietest one charted takes its place, from now on.
	low := 0
	for i, s := range rs.charts {
		if s.peak < rs.charts[low].peak {
			low = i
		}
	}
	if frac > rs.charts[low].peak {
		s := &series{key: strings.Clone(key), width: int64(time.Second), peak: frac}
		s.add(t, used)
		rs.charts[low] = s
	}
}

// observeRate counts a request against its key's last second.
func (rs *ruleState) observeRate(now time.Time, key string) {
	t := now.UnixNano()
	rc := rs.recent[key]
	if rc == nil {
		rc = &recent{}
		rs.recent[strings.Clone(key)] = rc
		if len(rs.recent) > 4*maxCounted {
			cut := t - int64(rateWindow)
			for k, r := range rs.recent {
				if n := len(r.times); n == 0 || r.times[n-1] <= cut {
					delete(rs.recent, k)
				}
			}
		}
	}
	cut := t - int64(rateWindow)
	i := 0
	for i < len(rc.times) && rc.times[i] <= cut {
		i++
	}
	if i > 0 {
		rc.times = append(rc.times[:0], rc.times[i:]...)
	}
	rc.times = append(rc.times, t)
	rs.observe(now, key, []int64{int64(len(rc.times))})
}

func top(m map[string]int64) []Count {
	out := make([]Count, 0, len(m))
	for k, v := range m {
		out = append(out, Count{Value: k, Count: v})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Value < out[j].Value
	})
	if len(out) > maxTop {
		out = out[:maxTop]
	}
	return out
}

func (rs *ruleState) finish() {
	rs.rep.TopKeys, rs.rep.TopUsers, rs.rep.TopUserAgent = top(rs.keys), top(rs.users), top(rs.uas)
	rs.rep.Peaks = rs.rep.Peaks[:0]
	for j, p := range rs.peaks {
		pk := Peak{Window: policy.FormatDuration(rs.windows[j]), Key: displayKey(p.key), Used: p.used, Limit: rs.limits[j]}
		if !p.at.IsZero() {
			pk.At = p.at.UTC()
		}
		rs.rep.Peaks = append(rs.rep.Peaks, pk)
	}
	sort.Slice(rs.charts, func(i, j int) bool { return rs.charts[i].peak > rs.charts[j].peak })
}

func sortFlows(f []FlowSchemaReport) {
	sort.Slice(f, func(i, j int) bool {
		if f[i].Matched != f[j].Matched {
			return f[i].Matched > f[j].Matched
		}
		return f[i].Name < f[j].Name
	})
}
