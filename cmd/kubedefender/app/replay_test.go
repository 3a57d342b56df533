package app

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	replayFixturePolicy = "../../../replay/testdata/policy.yaml"
	replayFixtureLog    = "../../../replay/testdata/recorded.log"
)

func TestReplayCommand(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string
	}{
		{name: "the table names each rule's denials and first denied request",
			args: []string{"replay", "--policy", replayFixturePolicy, "--audit-log", replayFixtureLog},
			want: []string{"Replayed 83 requests", "pod-deletes  budget     Enforce  8        3", "first denied:", "victim-3"}},
		{name: "-o html writes one page",
			args: []string{"replay", "--policy", replayFixturePolicy, "--audit-log", replayFixtureLog, "-o", "html"},
			want: []string{"<!DOCTYPE html>", "<svg", "</html>"}},
		{name: "every bad flag is reported at once",
			args:     []string{"replay", "-o", "xml", "--headroom", "0.5"},
			wantCode: 1,
			want:     []string{"--policy is required", "--audit-log is required", "--output must be table, json or html", "--headroom must be at least 1", "--headroom needs --suggest"}},
		{name: "a missing audit log is an error",
			args:     []string{"replay", "--policy", replayFixturePolicy, "--audit-log", "/nonexistent/audit.log"},
			wantCode: 1,
			want:     []string{"failed to open audit log"}},
		{name: "a bad policy is refused with its field path",
			args:     []string{"replay", "--policy", writeFile(t, "bad.yaml", strings.Replace(goodPolicy, "limit: 20", "limit: 0", 1)), "--audit-log", replayFixtureLog},
			wantCode: 1,
			want:     []string{"spec.budgets[0].windows[0].limit"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, tc.args...)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.wantCode, out, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(out+errOut, w) {
					t.Errorf("output lacks %q\nstdout: %s\nstderr: %s", w, out, errOut)
				}
			}
		})
	}
}

func TestReplayJSONHasTheDocumentedShape(t *testing.T) {
	code, out, errOut := run(t, "replay", "--policy", replayFixturePolicy, "--audit-log", replayFixtureLog, "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"events", "from", "to", "rules"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("report lacks %q", k)
		}
	}
	rule := doc["rules"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "kind", "matched", "denied", "firstDenied", "breakerTrips", "peaks"} {
		if _, ok := rule[k]; !ok {
			t.Errorf("rule lacks %q", k)
		}
	}
	peak := rule["peaks"].([]any)[0].(map[string]any)
	for _, k := range []string{"window", "key", "used", "limit", "at"} {
		if _, ok := peak[k]; !ok {
			t.Errorf("peak lacks %q", k)
		}
	}
}

func TestReplaySuggestPrintsAPolicyThatValidatesAndDeniesNothing(t *testing.T) {
	code, out, errOut := run(t, "replay", "--policy", replayFixturePolicy, "--audit-log", replayFixtureLog, "--suggest", "--headroom", "1.5")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	suggested := filepath.Join(t.TempDir(), "suggested.yaml")
	if err := os.WriteFile(suggested, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, vout, verr := run(t, "policy", "validate", suggested); code != 0 {
		t.Fatalf("policy validate: exit %d\n%s%s\n%s", code, vout, verr, out)
	}
	if !strings.Contains(out, "limit: 10") {
		t.Errorf("want the 5m window at 10 (peak 6 x 1.5 = 9, rounded up):\n%s", out)
	}
	code, out, errOut = run(t, "replay", "--policy", suggested, "--audit-log", replayFixtureLog, "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rep struct {
		Rules []struct {
			Name   string `json:"name"`
			Denied int    `json:"denied"`
		} `json:"rules"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Rules {
		if r.Denied != 0 {
			t.Errorf("the suggested %s denied %d", r.Name, r.Denied)
		}
	}
}
