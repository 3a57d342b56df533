package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
	"pgregory.net/rapid"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// The systemic fix for "a valid policy crashed the engine": random valid
// policies, extreme but valid numbers included, must validate and compile,
// and every decision on them — on the memory store and on a real Redis, at
// the same fake clock — must not panic and must be the same on both. Status
// (the /status source) and what `policy explain` uses (matching, flow
// schemas, an engine of its own at FrontExplain) must not panic either.
// Overrides, breaker resets and reloads that edit windows, breakers, modes
// and onStoreFailure are drawn too.

var (
	propDay      = 24 * time.Hour
	propLengths  = []time.Duration{time.Nanosecond, time.Millisecond, time.Second, 10 * time.Second, time.Minute, 5 * time.Minute, time.Hour, propDay, 7 * propDay, policy.MaxWindow}
	propLimits   = []int64{1, 1, 2, 2, 3, 5, 20, 1000, 1 << 40, math.MaxInt64}
	propCooldown = []time.Duration{time.Nanosecond, time.Second, time.Minute, 10 * time.Minute, propDay, policy.MaxCooldown}
	propQPS      = []float64{policy.MinQPS, 0.0123, 0.5, 1, 3, 20, 1000, policy.MaxQPS}
	propBursts   = []int64{0, 1, 2, 3, 40, 1000, policy.MaxBurst} // 0: the default
	propSteps    = []time.Duration{0, 0, 0, 0, 0, time.Nanosecond, time.Nanosecond, time.Microsecond, time.Millisecond, 100 * time.Millisecond, time.Second, 30 * time.Second, time.Minute, 11 * time.Minute, time.Hour, propDay, 47 * propDay, policy.MaxWindow + time.Second}
	propVerbs    = []string{"delete", "deletecollection", "evict", "create", "update", "get", "list", "watch", "patch"}
	propRes      = []string{"pods", "nodes", "configmaps", "deployments"}
	propNS       = []string{"", "a", "b"}
	propUsers    = []string{"alice", "bob", "system:serviceaccount:kube-system:ctl"}
	propUAs      = []string{"agent/1.0", "kubectl/v1.30", strings.Repeat("x", 300)}
)

func drawSubset[T any](t *rapid.T, pool []T, label string) []T {
	var out []T
	for _, v := range pool {
		if rapid.Bool().Draw(t, label) {
			out = append(out, v)
		}
	}
	return out
}

// drawMatch leaves each field empty (any) half the time, so rules match often.
func drawMatch(t *rapid.T, verbs []string, userAgents bool) policy.Match {
	var m policy.Match
	if rapid.Bool().Draw(t, "byVerb") {
		m.Verbs = drawSubset(t, verbs, "verb")
	}
	if rapid.Bool().Draw(t, "byResource") {
		m.Resources = drawSubset(t, []string{"pods", "nodes", "configmaps", "apps/deployments", "*"}, "resource")
	}
	if rapid.IntRange(0, 3).Draw(t, "byNamespace") == 0 {
		m.Namespaces = drawSubset(t, []string{"a", "b"}, "namespace")
	}
	if rapid.IntRange(0, 3).Draw(t, "byUser") == 0 {
		m.Users = drawSubset(t, propUsers, "user")
	}
	if userAgents && rapid.IntRange(0, 2).Draw(t, "byUA") == 0 {
		m.UserAgents = []string{rapid.SampledFrom([]string{"^agent/", "kubectl", "x{300}"}).Draw(t, "ua")}
	}
	return m
}

func drawWindows(t *rapid.T) []policy.Window {
	n := rapid.IntRange(1, policy.MaxWindows).Draw(t, "windows")
	var ws []policy.Window
	li, lim := -1, 0
	for j := 0; j < n; j++ {
		if li >= len(propLengths)-1 {
			break
		}
		li = rapid.IntRange(li+1, len(propLengths)-1).Draw(t, "length")
		lim = rapid.IntRange(lim, len(propLimits)-1).Draw(t, "limit")
		ws = append(ws, policy.Window{Window: policy.Duration{Duration: propLengths[li]}, Limit: propLimits[lim]})
	}
	return ws
}

func drawBreaker(t *rapid.T) *policy.Breaker {
	switch rapid.IntRange(0, 2).Draw(t, "breaker") {
	case 1:
		return &policy.Breaker{Recovery: policy.RecoveryManual}
	case 2:
		return &policy.Breaker{Recovery: policy.RecoveryAuto, Cooldown: policy.Duration{Duration: rapid.SampledFrom(propCooldown).Draw(t, "cooldown")},
			HalfOpenLimit: rapid.SampledFrom([]int64{1, 2, math.MaxInt64}).Draw(t, "halfOpen")}
	}
	return nil
}

var (
	propModes  = []policy.Mode{policy.ModeEnforce, policy.ModeEnforce, policy.ModeShadow}
	propOnFail = []policy.StoreFailurePolicy{policy.StoreFailureLocal, policy.StoreFailureAllow, policy.StoreFailureDeny}
)

func drawPolicy(t *rapid.T) *policy.DefenderPolicy {
	p := &policy.DefenderPolicy{APIVersion: "kubedefender.io/v1alpha1", Kind: "DefenderPolicy"}
	p.Metadata.Name = "prop"
	for i := rapid.IntRange(0, 4).Draw(t, "budgets"); i > 0; i-- {
		b := policy.Budget{
			Name: fmt.Sprintf("b%d", i), Mode: rapid.SampledFrom(propModes).Draw(t, "mode"),
			Match:   drawMatch(t, []string{"delete", "deletecollection", "evict", "create", "update", "*"}, false),
			Per:     rapid.SampledFrom([][]string{nil, {"namespace"}, {"user"}, {"namespace", "user"}, {"user", "namespace"}}).Draw(t, "per"),
			Windows: drawWindows(t), Breaker: drawBreaker(t), OnStoreFailure: rapid.SampledFrom(propOnFail).Draw(t, "onFail"),
		}
		if rapid.IntRange(0, 3).Draw(t, "exclude") == 0 {
			b.Exclude = &policy.Match{Users: []string{rapid.SampledFrom(propUsers).Draw(t, "excluded")}}
		}
		if rapid.Bool().Draw(t, "atRoot") && atRootValid(&b.Match) {
			b.Cascades = policy.CascadesAtRoot
		}
		p.Spec.Budgets = append(p.Spec.Budgets, b)
	}
	for i := rapid.IntRange(0, 3).Draw(t, "rateLimits"); i > 0; i-- {
		r := policy.RateLimit{
			Name: fmt.Sprintf("r%d", i), Mode: rapid.SampledFrom(propModes).Draw(t, "mode"),
			Match: drawMatch(t, []string{"get", "list", "watch", "create", "update", "patch", "delete", "*"}, true),
			Per:   rapid.SampledFrom([][]string{nil, {"user"}, {"userAgent"}, {"user", "userAgent"}, {"namespace", "userAgent", "user"}}).Draw(t, "per"),
			QPS:   rapid.SampledFrom(propQPS).Draw(t, "qps"), Burst: rapid.SampledFrom(propBursts).Draw(t, "burst"),
			OnStoreFailure: rapid.SampledFrom(propOnFail).Draw(t, "onFail"),
		}
		if rapid.Bool().Draw(t, "randomQPS") {
			r.QPS = rapid.Float64Range(policy.MinQPS, policy.MaxQPS).Draw(t, "qpsValue")
		}
		p.Spec.RateLimits = append(p.Spec.RateLimits, r)
	}
	if rapid.Bool().Draw(t, "priority") {
		p.Spec.PriorityLevels = []policy.PriorityLevel{{Name: "exempt", Exempt: true}, {Name: policy.CatchAll}}
		p.Spec.FlowSchemas = []policy.FlowSchema{{Name: "masters", Precedence: 1, PriorityLevel: "exempt", Match: policy.Match{Users: []string{"alice"}}}}
	}
	return p
}

// compilePolicy takes a drawn policy through the real entry point: YAML in
// (JSON is YAML), decode, default, validate, compile.
func compilePolicy(t *rapid.T, p *policy.DefenderPolicy) *policy.Compiled {
	doc, err := json.Marshal(p)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	c, err := policy.Parse("prop.yaml", doc)
	if err != nil {
		t.Fatalf("a valid policy was refused: %v\n%s", err, doc)
	}
	return c
}

// editPolicy is a reload: windows grow (a new store ID, never an old one
// again), breakers, modes and onStoreFailure change (the same ID).
func editPolicy(t *rapid.T, p *policy.DefenderPolicy) {
	for i := range p.Spec.Budgets {
		b := &p.Spec.Budgets[i]
		switch rapid.IntRange(0, 4).Draw(t, "edit") {
		case 1:
			for j := range b.Windows {
				if b.Windows[j].Limit < 1<<61 {
					b.Windows[j].Limit++
				}
			}
		case 2:
			b.Breaker = drawBreaker(t)
		case 3:
			b.Mode = rapid.SampledFrom(propModes).Draw(t, "mode")
			b.OnStoreFailure = rapid.SampledFrom(propOnFail).Draw(t, "onFail")
		}
	}
}

// atRootValid says whether validation accepts cascades: AtRoot on m: a
// delete-like verb (or any verb) and a namespaced resource (or any).
func atRootValid(m *policy.Match) bool {
	verbOK := len(m.Verbs) == 0
	for _, v := range m.Verbs {
		verbOK = verbOK || v == "delete" || v == "deletecollection" || v == "evict" || v == "*"
	}
	resOK := len(m.Resources) == 0
	for _, r := range m.Resources {
		resOK = resOK || r != "nodes"
	}
	return verbOK && resOK
}

// propCounts are removal counts, up to values no store may write.
var propCounts = []int64{0, 1, 2, 3, 20, 312, 5000, limiter.MaxCost, limiter.MaxCost + 1, 1 << 40, math.MaxInt64}

func drawAttributes(t *rapid.T) *limiter.Attributes {
	a := &limiter.Attributes{Attributes: policy.Attributes{
		Verb: rapid.SampledFrom(propVerbs).Draw(t, "verb"), Resource: rapid.SampledFrom(propRes).Draw(t, "resource"),
		Namespace: rapid.SampledFrom(propNS).Draw(t, "ns"), Name: "obj", User: rapid.SampledFrom(propUsers).Draw(t, "user"),
		UserAgent: rapid.SampledFrom(propUAs).Draw(t, "userAgent"), DryRun: rapid.IntRange(0, 5).Draw(t, "dryRun") == 0,
	}}
	if a.Resource == "deployments" {
		a.APIGroup = "apps"
	}
	a.Front = rapid.SampledFrom([]limiter.Front{limiter.FrontWebhook, limiter.FrontProxy}).Draw(t, "front")
	a.Checks = rapid.SampledFrom([]limiter.Checks{0, limiter.CheckBudgets, limiter.CheckRateLimits, limiter.CheckBreakers, limiter.CheckBudgets | limiter.CheckRateLimits}).Draw(t, "checks")
	if rapid.IntRange(0, 3).Draw(t, "once") == 0 {
		a.ChargeOnce = rapid.SampledFrom([]string{"uid-1", "uid-2"}).Draw(t, "uid")
	}
	switch rapid.IntRange(0, 3).Draw(t, "cascade") {
	case 1: // a root: what it removes
		for i := rapid.IntRange(1, 4).Draw(t, "removals"); i > 0; i-- {
			rm := limiter.Removal{Resource: rapid.SampledFrom([]string{"pods", "pods", "configmaps", "deployments"}).Draw(t, "removed"),
				Namespace: rapid.SampledFrom(propNS[1:]).Draw(t, "removedNS"), Count: rapid.SampledFrom(propCounts).Draw(t, "count")}
			if rm.Resource == "deployments" {
				rm.APIGroup = "apps"
			}
			a.Removes = append(a.Removes, rm)
		}
	case 2:
		a.FollowUp = true
	}
	return a
}

func drawOverride(t *rapid.T, c *policy.Compiled, now time.Time) limiter.Override {
	o := limiter.Override{Name: "o", Namespace: "kubedefender-system", ExpiresAt: now.Add(rapid.SampledFrom([]time.Duration{time.Second, time.Hour}).Draw(t, "for")), ResetBreaker: rapid.Bool().Draw(t, "reset")}
	var names []string
	for _, b := range c.Budgets {
		names = append(names, b.Name)
	}
	o.Budgets = drawSubset(t, append(names, "*"), "overrideBudget")
	names = names[:0]
	for _, r := range c.RateLimits {
		names = append(names, r.Name)
	}
	o.RateLimits = drawSubset(t, append(names, "*"), "overrideRate")
	o.Namespaces = drawSubset(t, []string{"a", "b"}, "overrideNS")
	o.Users = drawSubset(t, propUsers[:2], "overrideUser")
	return o
}

// noPanic runs f and fails the property, with what was being done, if it panics.
func noPanic(t *rapid.T, what string, f func()) {
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("%s panicked: %v", what, p)
		}
	}()
	f()
}

// randomValidPoliciesDecideAlike is the property above: newStore is the
// store held against the memory store.
func randomValidPoliciesDecideAlike(t *testing.T, newStore NewStore) {
	var decisions, denied, rootDenied, followUps int
	defer func() {
		t.Logf("%d decisions, %d denied (%d roots denied by an AtRoot budget), %d follow-ups admitted free", decisions, denied, rootDenied, followUps)
	}()
	rapid.Check(t, func(rt *rapid.T) {
		clk := clocktesting.NewFakeClock(Epoch)
		p := drawPolicy(rt)
		var c *policy.Compiled
		noPanic(rt, "validation and compilation", func() { c = compilePolicy(rt, p) })
		mem, err := limiter.NewEngine(limiter.EngineConfig{Policy: c, Store: limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk}), Fallback: limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk}), Clock: clk})
		if err != nil {
			rt.Fatal(err)
		}
		tested, err := limiter.NewEngine(limiter.EngineConfig{Policy: c, Store: newStore(t, clk), Fallback: limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk}), Clock: clk})
		if err != nil {
			rt.Fatal(err)
		}
		for step := rapid.IntRange(10, 60).Draw(rt, "steps"); step > 0; step-- {
			clk.Step(rapid.SampledFrom(propSteps).Draw(rt, "advance"))
			switch rapid.IntRange(0, 19).Draw(rt, "action") {
			case 0: // a reload
				editPolicy(rt, p)
				noPanic(rt, "a reload", func() {
					c = compilePolicy(rt, p)
					Reload(rt, mem, c)
					Reload(rt, tested, c)
				})
				continue
			case 1: // an override, maybe resetting breakers
				o := drawOverride(rt, c, clk.Now())
				noPanic(rt, "an override", func() {
					mem.SetOverrides([]limiter.Override{o})
					tested.SetOverrides([]limiter.Override{o})
					if o.ResetBreaker {
						if err := mem.ResetBreakers(context.Background(), &o); err != nil {
							rt.Fatalf("memory reset: %v", err)
						}
						if err := tested.ResetBreakers(context.Background(), &o); err != nil {
							rt.Fatalf("store reset: %v", err)
						}
					}
				})
				continue
			case 2: // status, what /status serves
				noPanic(rt, "status", func() {
					for _, e := range []*limiter.Engine{mem, tested} {
						if st := e.Status(context.Background(), 5); len(st.Errors) > 0 {
							rt.Fatalf("status errors: %v", st.Errors)
						}
					}
				})
				continue
			}
			a := drawAttributes(rt)
			var dm, dr limiter.Decision
			noPanic(rt, "Decide on the memory store", func() { dm = mem.Decide(context.Background(), a) })
			noPanic(rt, "Decide on the store", func() { dr = tested.Decide(context.Background(), a) })
			if !reflect.DeepEqual(dm, dr) {
				rt.Fatalf("%s %s ns=%q user=%q dryRun=%v checks=%d once=%q at +%s:\nmemory %+v\nstore  %+v",
					a.Verb, a.Resource, a.Namespace, a.User, a.DryRun, a.Checks, a.ChargeOnce, clk.Now().Sub(Epoch), dm, dr)
			}
			decisions++
			if !dm.Allowed {
				denied++
			}
			if dm.Cost > 0 {
				rootDenied++
			}
			if dm.FollowUp {
				followUps++
			}
			if dm.Fallback {
				rt.Fatalf("a decision fell back (%s): the stores must answer every valid policy", dm.Message)
			}
			if rapid.IntRange(0, 4).Draw(rt, "explain") == 0 {
				// What `policy explain` runs: matching, flow schemas, an engine of its own.
				noPanic(rt, "explain", func() {
					for i := range c.Budgets {
						c.Budgets[i].Rule.Match.Matches(&a.Attributes)
						c.Budgets[i].Applies(&a.Attributes)
					}
					for i := range c.RateLimits {
						c.RateLimits[i].Applies(&a.Attributes)
					}
					c.FlowSchemaFor(&a.Attributes)
					ex, err := limiter.NewEngine(limiter.EngineConfig{Policy: c})
					if err != nil {
						rt.Fatal(err)
					}
					ex.Decide(context.Background(), &limiter.Attributes{Attributes: a.Attributes, Front: limiter.FrontExplain})
				})
			}
		}
	})
}
