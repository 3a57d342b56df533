package limiter

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// captured is a slog.Handler that keeps every record.
type captured struct {
	mu      sync.Mutex
	records []slog.Record
}

func (c *captured) Enabled(context.Context, slog.Level) bool { return true }
func (c *captured) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.records = append(c.records, r.Clone())
	return nil
}
func (c *captured) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *captured) WithGroup(string) slog.Handler      { return c }

// lines returns the records as "message k=v k=v", in order.
func (c *captured) lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, r := range c.records {
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "rule" || a.Key == "key" || a.Key == "more" || a.Key == "denied" {
				fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			}
			return true
		})
		out = append(out, b.String())
	}
	return out
}

func (c *captured) count(msg string) int {
	n := 0
	for _, l := range c.lines() {
		if strings.HasPrefix(l, msg+" ") || l == msg {
			n++
		}
	}
	return n
}

func TestDenialLogLogsTheFirstDenialOfAKeyAndSummarisesTheRest(t *testing.T) {
	cases := []struct {
		name    string
		maxKeys int
		// denials are (rule, key) pairs denied at the start of the interval.
		denials [][2]string
		// wantFirst is how many were the first of their pair (logged in full).
		wantFirst int
		// wantSummary are the summary lines when the interval ends.
		wantSummary []string
	}{
		{
			name:        "a storm on one key is one line, then one summary",
			maxKeys:     10,
			denials:     [][2]string{{"lists", "user=bob"}, {"lists", "user=bob"}, {"lists", "user=bob"}},
			wantFirst:   1,
			wantSummary: []string{"more requests denied rule=lists key=user=bob more=2"},
		},
		{
			name:      "each key is its own first denial; a key denied once has no summary",
			maxKeys:   10,
			denials:   [][2]string{{"lists", "user=a"}, {"lists", "user=b"}, {"lists", "user=b"}, {"deletes", "user=a"}},
			wantFirst: 3,
			wantSummary: []string{
				"more requests denied rule=lists key=user=b more=1",
			},
		},
		{
			name:      "keys past the bound are counted together in one line",
			maxKeys:   2,
			denials:   [][2]string{{"lists", "user=a"}, {"lists", "user=b"}, {"lists", "user=c"}, {"lists", "user=d"}, {"lists", "user=a"}},
			wantFirst: 2,
			wantSummary: []string{
				"more requests denied rule=lists key=user=a more=1",
				"more requests denied on keys past the log's bound denied=2",
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(testEpoch)
			h := &captured{}
			l := newDenialLog(clk, slog.New(h), 10*time.Second, tc.maxKeys)
			first := 0
			for _, d := range tc.denials {
				if l.first(KindBudget, d[0], d[1]) {
					first++
				}
			}
			if first != tc.wantFirst {
				t.Fatalf("%d denials were first of their pair, want %d", first, tc.wantFirst)
			}
			clk.Step(9 * time.Second)
			l.flushDue()
			if got := h.lines(); len(got) != 0 {
				t.Fatalf("summaries before the interval ended: %q", got)
			}
			clk.Step(time.Second)
			l.flushDue()
			got := h.lines()
			if strings.Join(sorted(got), "\n") != strings.Join(sorted(tc.wantSummary), "\n") {
				t.Fatalf("summaries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.wantSummary, "\n"))
			}
			if !l.first(KindBudget, tc.denials[0][0], tc.denials[0][1]) {
				t.Fatal("the first denial of a new interval was not logged in full")
			}
		})
	}
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	sort.Strings(out)
	return out
}

// TestEngineLogsADenialStormAsOneLineAndASummary: 100 denied deletes in one
// namespace within 10s are one "request denied" line and, once the interval
// ends, one summary of the other 99; the next interval logs in full again.
func TestEngineLogsADenialStormAsOneLineAndASummary(t *testing.T) {
	h := &captured{}
	e, clk := newTestEngine(t, EngineConfig{Logger: slog.New(h)})
	ctx := context.Background()
	for i := 0; i < 3; i++ { // pod-deletes allows 3 a minute
		e.Decide(ctx, podDelete("prod", "p"))
	}
	for i := 0; i < 100; i++ {
		if d := e.Decide(ctx, podDelete("prod", "p")); d.Allowed {
			t.Fatalf("delete %d admitted past the limit", i)
		}
	}
	if n := h.count("request denied"); n != 1 {
		t.Fatalf("%d request denied lines for one key in one interval, want 1", n)
	}
	clk.Step(denialLogInterval)
	e.Decide(ctx, podDelete("prod", "p"))
	if n := h.count("request denied"); n != 2 {
		t.Fatalf("%d request denied lines after the interval, want the new interval's first (2 in all)", n)
	}
	if got := h.lines(); !slices.Contains(got, "more requests denied rule=pod-deletes key=namespace=prod more=99") {
		t.Fatalf("no summary of the 99 others:\n%s", strings.Join(got, "\n"))
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { e.Run(runCtx); close(done) }()
	e.Decide(ctx, podDelete("prod", "p"))
	cancel()
	<-done
	if got := h.lines(); !slices.Contains(got, "more requests denied rule=pod-deletes key=namespace=prod more=1") {
		t.Fatalf("Run did not write the pending summary when it stopped:\n%s", strings.Join(got, "\n"))
	}
}
