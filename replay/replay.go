package replay

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// Config configures a replay.
type Config struct {
	// Policy is the policy to judge the log with; required.
	Policy *policy.Compiled
	// Files are the audit logs ("-" is Stdin); required.
	Files []string
	Stdin io.Reader
	// Delay is how far out of order (by requestReceivedTimestamp) events may
	// be and still be replayed in order (default 5s).
	Delay time.Duration
	// MaxWait is how long after its receipt a request without a
	// ResponseComplete stage (a watch, a log cut short) is held (default 1m).
	MaxWait time.Duration
	// ChargeOnceTTL is how long a delete of an object is remembered so that
	// a second delete of the same object (the kubelet's final delete of a
	// terminating pod) is free (default 10m). See the package doc.
	ChargeOnceTTL time.Duration
	// MaxProblems bounds the problems kept in the report (all are counted;
	// default 100).
	MaxProblems int
	// OnProblem, when set, is told of every skipped line as it is found.
	OnProblem func(Problem)
}

// Refused codes: a request the API server answered with one of these never
// reached validating admission (authentication, authorization, lookup,
// decoding, its own validation, API Priority and Fairness), unless the
// status message says an admission webhook denied it.
var refusedBeforeAdmission = map[int]bool{400: true, 401: true, 403: true, 404: true, 405: true, 406: true, 413: true, 415: true, 422: true, 429: true}

// Run replays the audit logs against the policy and returns the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Policy == nil {
		return nil, errors.New("failed to replay: no policy")
	}
	if len(cfg.Files) == 0 {
		return nil, errors.New("failed to replay: no audit log")
	}
	if cfg.Delay <= 0 {
		cfg.Delay = 5 * time.Second
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = time.Minute
	}
	if cfg.MaxWait < cfg.Delay {
		cfg.MaxWait = cfg.Delay
	}
	if cfg.ChargeOnceTTL <= 0 {
		cfg.ChargeOnceTTL = 10 * time.Minute
	}
	if cfg.MaxProblems <= 0 {
		cfg.MaxProblems = 100
	}
	rp, err := newReplayer(cfg)
	if err != nil {
		return nil, err
	}
	var m merger
	defer func() {
		for _, s := range m {
			s.closer.Close()
		}
	}()
	stdinUsed := false
	for _, f := range cfg.Files {
		if f == "-" {
			if stdinUsed {
				return nil, errors.New("failed to replay: stdin (-) given twice")
			}
			stdinUsed = true
		}
		s, err := openSource(f, cfg.Stdin, rp.problem)
		if err != nil {
			return nil, err
		}
		ok, err := s.advance()
		if err != nil {
			s.closer.Close()
			return nil, err
		}
		if !ok {
			s.closer.Close()
			continue
		}
		m = append(m, s)
	}
	heap.Init(&m)
	n := 0
	for len(m) > 0 {
		if n++; n%4096 == 0 && ctx.Err() != nil {
			return nil, fmt.Errorf("failed to replay: %w", ctx.Err())
		}
		s := m[0]
		rp.order.add(s.next, s.name, s.nextLine)
		ok, err := s.advance()
		if err != nil {
			return nil, err
		}
		if ok {
			heap.Fix(&m, 0)
		} else {
			s.closer.Close()
			heap.Pop(&m)
		}
		for r := rp.order.pop(false); r != nil; r = rp.order.pop(false) {
			rp.judge(r)
		}
	}
	for r := rp.order.pop(true); r != nil; r = rp.order.pop(true) {
		rp.judge(r)
	}
	return rp.finish(), nil
}

// replayer judges requests one by one on two engines sharing a simulated
// clock: the policy's own (denials, breaker trips) and a demand engine with
// the same rules and no limit (what each window would hold had nothing been
// denied: the peaks, and so --suggest).
type replayer struct {
	cfg    Config
	clock  *clocktesting.FakePassiveClock
	engine *limiter.Engine
	demand *limiter.Engine
	stores [2]*limiter.MemoryStore
	pol    *policy.Compiled
	ownNS  string
	report *Report
	rules  map[string]*ruleState // by rule name (budgets and rate limits share no name... see ruleKey)
	order  *reorder
	cur    *request
	// the item of a deletecollection being judged ("" otherwise)
	curName   string
	lastSweep time.Time
	flows     map[string]*FlowSchemaReport
}

func ruleKey(kind limiter.RuleKind, name string) string { return kind.String() + "/" + name }

func newReplayer(cfg Config) (*replayer, error) {
	rp := &replayer{
		cfg:    cfg,
		clock:  clocktesting.NewFakePassiveClock(time.Unix(0, 0)),
		pol:    cfg.Policy,
		ownNS:  cfg.Policy.Policy.Spec.BreakGlass.Namespace,
		report: &Report{},
		rules:  map[string]*ruleState{},
		order:  newReorder(cfg.Delay, cfg.MaxWait),
		flows:  map[string]*FlowSchemaReport{},
	}
	for i := range cfg.Policy.Budgets {
		b := cfg.Policy.Budgets[i].Budget
		rs := newRuleState(limiter.KindBudget, b.Name, string(b.Mode), b.Windows)
		rp.rules[ruleKey(limiter.KindBudget, b.Name)] = rs
		rp.report.Rules = append(rp.report.Rules, rs.rep)
	}
	for i := range cfg.Policy.RateLimits {
		r := cfg.Policy.RateLimits[i].RateLimit
		rs := newRateState(r)
		rp.rules[ruleKey(limiter.KindRateLimit, r.Name)] = rs
		rp.report.Rules = append(rp.report.Rules, rs.rep)
	}
	dp, err := demandPolicy(cfg.Policy)
	if err != nil {
		return nil, err
	}
	for i, p := range []*policy.Compiled{cfg.Policy, dp} {
		ms := limiter.NewMemoryStore(limiter.MemoryConfig{Clock: rp.clock})
		rp.stores[i] = ms
		e, err := limiter.NewEngine(limiter.EngineConfig{
			Policy: p, Store: &recorder{MemoryStore: ms, rp: rp, demand: i == 1}, Clock: rp.clock,
			ChargeOnceTTL: cfg.ChargeOnceTTL,
		})
		if err != nil {
			return nil, fmt.Errorf("failed to replay: %w", err)
		}
		if i == 0 {
			rp.engine = e
		} else {
			rp.demand = e
		}
	}
	return rp, nil
}

// demandPolicy is p with every budget limit out of reach and no breaker (so
// its windows count every charge), and no rate limit (the replayer measures
// rates itself).
func demandPolicy(p *policy.Compiled) (*policy.Compiled, error) {
	cp, err := copyPolicy(p.Policy)
	if err != nil {
		return nil, err
	}
	cp.Spec.RateLimits = nil
	for i := range cp.Spec.Budgets {
		b := &cp.Spec.Budgets[i]
		b.Breaker = nil
		b.Mode = policy.ModeEnforce
		for j := range b.Windows {
			b.Windows[j].Limit = 1 << 50
		}
	}
	js, err := json.Marshal(cp)
	if err != nil {
		return nil, fmt.Errorf("failed to copy the policy: %w", err)
	}
	c, err := policy.Parse("demand", js)
	if err != nil {
		return nil, fmt.Errorf("failed to build the demand policy: %w", err)
	}
	return c, nil
}

func (rp *replayer) problem(p Problem) {
	rp.report.Skipped++
	if len(rp.report.Problems) < rp.cfg.MaxProblems {
		rp.report.Problems = append(rp.report.Problems, p)
	}
	if rp.cfg.OnProblem != nil {
		rp.cfg.OnProblem(p)
	}
}

// sweepEvery is how often, in the log's time, the stores forget idle keys.
const sweepEvery = 10 * time.Minute

// judge replays one request.
func (rp *replayer) judge(r *request) {
	rep := rp.report
	rep.Events++
	if rep.From.IsZero() || r.received.Before(rep.From) {
		rep.From = r.received
	}
	if r.received.After(rep.To) {
		rep.To = r.received
	}
	now := r.received
	// A log merged from API servers with skewed clocks can step back a
	// little; the engine's windows need a clock that does not.
	if now.Before(rp.clock.Now()) {
		now = rp.clock.Now()
	}
	rp.clock.SetTime(now)
	if now.Sub(rp.lastSweep) > sweepEvery {
		for _, s := range rp.stores {
			s.Sweep()
		}
		rp.lastSweep = now
	}
	rp.cur, rp.curName = r, ""
	ctx := context.Background()
	dryRun := strings.Contains(r.uri, "dryRun=")
	a := limiter.Attributes{Attributes: policy.Attributes{
		Verb: r.verb, APIGroup: r.ref.APIGroup, Resource: r.ref.Resource, Subresource: r.ref.Subresource,
		Namespace: r.ref.Namespace, Name: r.ref.Name, User: r.user, Groups: r.groups, UserAgent: r.userAgent,
		DryRun: dryRun,
	}}
	if a.Verb == "create" && a.APIGroup == "" && a.Resource == "pods" && a.Subresource == "eviction" {
		a.Verb = "evict"
	}
	// The proxy: rate limits and flow schemas, on the request's own verb.
	if len(rp.pol.FlowSchemas) > 0 {
		name, level := policy.CatchAll, policy.CatchAll
		if fs := rp.pol.FlowSchemaFor(&a.Attributes); fs != nil {
			name, level = fs.Name, fs.PriorityLevel
		}
		f := rp.flows[name]
		if f == nil {
			f = &FlowSchemaReport{Name: name, PriorityLevel: level}
			rp.flows[name] = f
		}
		f.Matched++
	}
	// The proxy authenticates before it limits: a request the API server
	// could not authenticate (401) would not have been charged.
	if len(rp.pol.RateLimits) > 0 && r.code != 401 {
		a.Front, a.Checks = limiter.FrontProxy, limiter.CheckRateLimits
		rp.engine.Decide(ctx, &a)
	}
	// The webhook: budgets, on the verb admission sees.
	if len(rp.pol.Budgets) == 0 || !rp.reachedAdmission(r) {
		return
	}
	switch {
	case r.verb == "delete":
		a.Verb = "delete"
	case r.verb == "deletecollection":
		a.Verb = "delete"
	case a.Verb == "evict":
	case r.verb == "create" && a.Subresource == "":
	case (r.verb == "update" || r.verb == "patch") && a.Subresource == "":
		a.Verb = "update"
	default:
		return
	}
	if policy.Exemption(&a.Attributes, rp.ownNS) != "" {
		return
	}
	a.Front, a.Checks = limiter.FrontWebhook, limiter.CheckBudgets
	if r.verb != "deletecollection" {
		rp.decideBudget(ctx, &a)
		return
	}
	names, ok := responseItems(r.response)
	if !ok {
		rep.DeleteCollections.WithoutBody++
		a.Name = ""
		rp.decideBudget(ctx, &a)
		return
	}
	rep.DeleteCollections.WithBody++
	rep.DeleteCollections.Items += len(names)
	for _, n := range names {
		a.Name, rp.curName = n, n
		rp.decideBudget(ctx, &a)
	}
}

func (rp *replayer) decideBudget(ctx context.Context, a *limiter.Attributes) {
	a.ChargeOnce = ""
	switch {
	case a.DryRun:
	case a.Verb == "delete" && a.Name != "":
		a.ChargeOnce = "delete/" + a.APIGroup + "/" + a.Resource + "/" + a.Namespace + "/" + a.Name
	case a.Verb == "evict":
		a.ChargeOnce = "evict/" + a.Namespace + "/" + a.Name
	}
	rp.engine.Decide(ctx, a)
	rp.demand.Decide(ctx, a)
}

// reachedAdmission says whether the webhook would have been asked about r.
func (rp *replayer) reachedAdmission(r *request) bool {
	if !refusedBeforeAdmission[r.code] {
		return true
	}
	if r.code == 401 || r.code == 404 || r.authzDeny {
		return false
	}
	return strings.Contains(r.message, "admission webhook")
}

// recorder is the engines' store: the memory store, watched. It sees every
// check the engine makes with its result, which is all a report needs; the
// rest of the Store contract is the memory store's own.
type recorder struct {
	*limiter.MemoryStore
	rp     *replayer
	demand bool
}

var _ limiter.Store = (*recorder)(nil)

func (s *recorder) Budgets(ctx context.Context, b *limiter.BudgetBatch) error {
	err := s.MemoryStore.Budgets(ctx, b)
	if err == nil && len(b.Results) == len(b.Checks) && !b.Repeat {
		if s.demand {
			s.rp.onDemand(b)
		} else {
			s.rp.onBudgets(b)
		}
	}
	return err
}

func (s *recorder) Rates(ctx context.Context, b *limiter.RateBatch) error {
	err := s.MemoryStore.Rates(ctx, b)
	if err == nil && len(b.Results) == len(b.Checks) {
		s.rp.onRates(b)
	}
	return err
}

func (rp *replayer) onBudgets(b *limiter.BudgetBatch) {
	for i := range b.Checks {
		c, res := &b.Checks[i], &b.Results[i]
		rs := rp.rules[ruleKey(limiter.KindBudget, c.Spec.Name)]
		if rs == nil {
			continue
		}
		rs.rep.Matched++
		if !res.Allowed {
			rs.deny(rp.denial(b.Now, c.Key))
		}
		if b.Commit && res.Prev != limiter.Open && res.State == limiter.Open {
			d := rp.denial(b.Now, c.Key)
			rs.trip(Trip{At: d.At, Key: d.Key, From: res.Prev.String(), Request: d.Request})
		}
	}
}

func (rp *replayer) onDemand(b *limiter.BudgetBatch) {
	if b.Commit && !b.Admitted {
		return
	}
	for i := range b.Checks {
		c, res := &b.Checks[i], &b.Results[i]
		rs := rp.rules[ruleKey(limiter.KindBudget, c.Spec.Name)]
		if rs == nil {
			continue
		}
		used := res.Used
		if !b.Commit {
			// A dry run charges nothing but needs room for one more.
			for j := range rs.windows {
				used[j]++
			}
		}
		rs.observe(b.Now, c.Key, used[:len(rs.windows)])
	}
}

func (rp *replayer) onRates(b *limiter.RateBatch) {
	for i := range b.Checks {
		c, res := &b.Checks[i], &b.Results[i]
		rs := rp.rules[ruleKey(limiter.KindRateLimit, c.Spec.Name)]
		if rs == nil {
			continue
		}
		rs.rep.Matched++
		if !res.Allowed && !res.Skipped {
			rs.deny(rp.denial(b.Now, c.Key))
		}
		rs.observeRate(b.Now, c.Key)
	}
}

func (rp *replayer) denial(at time.Time, key string) Denial {
	r := rp.cur
	name := r.ref.Name
	if rp.curName != "" {
		name = rp.curName
	}
	return Denial{At: at.UTC(), Key: displayKey(key), Request: RequestRef{
		AuditID: r.id, Verb: r.verb, Resource: policy.ResourceEntry(r.ref.APIGroup, r.ref.Resource, r.ref.Subresource), Namespace: r.ref.Namespace, Name: name,
		User: r.user, UserAgent: r.userAgent, Code: r.code, Source: fmt.Sprintf("%s:%d", r.file, r.line),
	}}
}

// displayKey writes a cluster-wide key as "(cluster)", as status does.
func displayKey(k string) string {
	if k == "" {
		return "(cluster)"
	}
	return k
}

func (rp *replayer) finish() *Report {
	rep := rp.report
	rep.Late = rp.order.late
	for _, rs := range rp.rules {
		rs.finish()
	}
	for _, f := range rp.flows {
		rep.FlowSchemas = append(rep.FlowSchemas, *f)
	}
	sortFlows(rep.FlowSchemas)
	if rep.From.IsZero() {
		rep.From, rep.To = time.Time{}, time.Time{}
	}
	rep.From, rep.To = rep.From.UTC(), rep.To.UTC()
	rep.states = map[string]*ruleState{}
	for k, v := range rp.rules {
		rep.states[k] = v
	}
	return rep
}

// copyPolicy returns a deep copy of p.
func copyPolicy(p *policy.DefenderPolicy) (*policy.DefenderPolicy, error) {
	js, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("failed to copy the policy: %w", err)
	}
	cp := &policy.DefenderPolicy{}
	if err := json.Unmarshal(js, cp); err != nil {
		return nil, fmt.Errorf("failed to copy the policy: %w", err)
	}
	return cp, nil
}
