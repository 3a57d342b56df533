package replay

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/kubedefender/kubedefender/policy"
)

func TestReadable(t *testing.T) {
	tests := []struct {
		in   float64
		want int64
	}{
		{0, 1}, {1, 1}, {1.2, 2}, {2, 2}, {3, 5}, {5, 5}, {6, 10}, {10, 10}, {11, 20}, {199, 200}, {201, 500}, {999, 1000}, {1001, 2000},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.in), func(t *testing.T) {
			if got := Readable(tc.in); got != tc.want {
				t.Errorf("Readable(%v) = %d, want %d", tc.in, got, tc.want)
			}
		})
	}
}

// randomPolicy draws a policy with budgets and a rate limit over the
// verbs randomLog uses.
func randomPolicy(t *rapid.T) string {
	var b strings.Builder
	b.WriteString("apiVersion: kubedefender.io/v1alpha1\nkind: DefenderPolicy\nmetadata: {name: p}\nspec:\n  budgets:\n")
	pers := []string{"[]", "[namespace]", "[user]", "[namespace, user]"}
	for i := range rapid.IntRange(1, 3).Draw(t, "budgets") {
		verbs := rapid.SampledFrom([]string{"[delete]", "[delete, evict]", "[update, create]", "[delete, update]"}).Draw(t, "verbs")
		l1 := rapid.Int64Range(1, 5).Draw(t, "l1")
		l2 := l1 + rapid.Int64Range(0, 10).Draw(t, "l2")
		fmt.Fprintf(&b, "  - name: b%d\n    mode: %s\n    match: {verbs: %s, resources: [\"*\"]}\n    per: %s\n    windows: [{window: 10s, limit: %d}, {window: 1m, limit: %d}]\n",
			i, rapid.SampledFrom([]string{"Enforce", "Shadow"}).Draw(t, "mode"), verbs, rapid.SampledFrom(pers).Draw(t, "per"), l1, l2)
		switch rapid.IntRange(0, 2).Draw(t, "breaker") {
		case 1:
			b.WriteString("    breaker: {recovery: Manual}\n")
		case 2:
			b.WriteString("    breaker: {recovery: Auto, cooldown: 20s, halfOpenLimit: 1}\n")
		}
	}
	fmt.Fprintf(&b, "  rateLimits:\n  - name: r\n    mode: %s\n    match: {verbs: [list, get], resources: [\"*\"], userAgents: [\"^agent/\"]}\n    per: [user, userAgent]\n    qps: %d\n    burst: %d\n",
		rapid.SampledFrom([]string{"Enforce", "Shadow"}).Draw(t, "rmode"), rapid.IntRange(1, 3).Draw(t, "qps"), rapid.IntRange(1, 3).Draw(t, "burst"))
	return b.String()
}

// randomLog draws a log of deletes (some repeated, some dry runs, some
// refused before admission), deletecollections, evictions, patches,
// creates and lists, close together in time.
func randomLog(t *rapid.T) []ev {
	n := rapid.IntRange(1, 120).Draw(t, "events")
	var evs []ev
	at := time.Duration(0)
	for i := range n {
		at += time.Duration(rapid.IntRange(0, 3000).Draw(t, "gapMs")) * time.Millisecond
		e := ev{
			id: fmt.Sprintf("e%d", i), at: at, code: 200,
			ns:   rapid.SampledFrom([]string{"a", "b", "c"}).Draw(t, "ns"),
			user: rapid.SampledFrom([]string{"u1", "u2"}).Draw(t, "user"),
			ua:   rapid.SampledFrom([]string{"agent/1", "kubectl/1"}).Draw(t, "ua"),
			name: fmt.Sprintf("p%d", rapid.IntRange(0, 8).Draw(t, "name")), resource: "pods",
		}
		switch rapid.IntRange(0, 7).Draw(t, "kind") {
		case 0, 1:
			e.verb = "delete"
		case 2:
			e.verb, e.name = "deletecollection", ""
			if rapid.Bool().Draw(t, "body") {
				e.response = `{"kind":"PodList","items":[{"metadata":{"name":"x1"}},{"metadata":{"name":"x2"}}]}`
			}
		case 3:
			e.verb, e.sub = "create", "eviction"
		case 4:
			e.verb, e.resource, e.group = "patch", "deployments", "apps"
		case 5:
			e.verb = "create"
		default:
			e.verb = rapid.SampledFrom([]string{"list", "get"}).Draw(t, "read")
		}
		switch rapid.IntRange(0, 9).Draw(t, "twist") {
		case 0:
			e.uri = "/x?dryRun=All"
		case 1:
			e.code = 404
		case 2:
			e.code, e.forbid = 403, true
		}
		evs = append(evs, e)
	}
	return evs
}

// The policy --suggest prints validates and, replayed against the log it
// came from, denies nothing and trips no breaker — whatever the policy it
// started from denied.
func TestSuggestedPolicyDeniesNothingOnItsOwnLog(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		src := randomPolicy(rt)
		log := writeLog(t, randomLog(rt))
		headroom := rapid.SampledFrom([]float64{1, 1.5, 2, 3}).Draw(rt, "headroom")
		rep := run(t, parsePolicy(t, src), log)
		in, err := policy.Decode("in.yaml", []byte(src))
		if err != nil {
			rt.Fatalf("%v", err)
		}
		sug, err := rep.Suggest(in, headroom)
		if err != nil {
			rt.Fatalf("%v", err)
		}
		var out bytes.Buffer
		if err := rep.WriteSuggestion(&out, sug, headroom); err != nil {
			rt.Fatalf("%v", err)
		}
		compiled, err := policy.Parse("suggested.yaml", out.Bytes())
		if err != nil {
			rt.Fatalf("the suggestion does not validate: %v\n%s", err, out.String())
		}
		again := run(t, compiled, log)
		for _, r := range again.Rules {
			if r.Denied != 0 || len(r.BreakerTrips) != 0 {
				rt.Fatalf("the suggested %s %q denied %d (first %+v) and tripped %d times\npolicy:\n%s", r.Kind, r.Name, r.Denied, r.FirstDenied, len(r.BreakerTrips), out.String())
			}
		}
		// And it keeps the input's rules, keys and windows.
		for i, b := range compiled.Policy.Spec.Budgets {
			orig := in.Spec.Budgets[i]
			if b.Name != orig.Name || fmt.Sprint(b.Per) != fmt.Sprint(orig.Per) || len(b.Windows) != len(orig.Windows) {
				rt.Fatalf("budget %d changed shape: %+v, was %+v", i, b, orig)
			}
			for j, w := range b.Windows {
				if w.Window != orig.Windows[j].Window {
					rt.Fatalf("budget %s window %d changed: %v, was %v", b.Name, j, w.Window, orig.Windows[j].Window)
				}
			}
		}
	})
}
