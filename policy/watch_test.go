package policy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kubedefender/kubedefender/internal/testwait"
)

// policyWithLimit is a valid policy whose only budget allows limit deletes a minute.
func policyWithLimit(limit int) string {
	return fmt.Sprintf(`apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata:
  name: watched
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods]}
    windows:
    - {window: 1m, limit: %d}
`, limit)
}

// brokenPolicy fails validation: a window's limit must be greater than 0.
var brokenPolicy = policyWithLimit(0)

// writeAtomically replaces path the way editors and kubectl cp do: a new file
// renamed over the old one, so the watcher never reads a half-written file.
func writeAtomically(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// newIdleWatcher writes a valid policy (limit 10) into a new directory and
// returns a Watcher on it that does not run, with the policy's path and the
// registry of its metrics.
func newIdleWatcher(t *testing.T) (*Watcher, string, *prometheus.Registry) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeAtomically(t, path, policyWithLimit(10))
	reg := prometheus.NewRegistry()
	w, err := NewWatcher(WatcherConfig{Path: path, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return w, path, reg
}

// watched is a running Watcher over a real directory.
type watched struct {
	w   *Watcher
	reg *prometheus.Registry
	dir string

	mu       sync.Mutex
	received []*Compiled
}

func (h *watched) reloads(result string) float64 {
	return testutil.ToFloat64(h.w.reloads.WithLabelValues(result))
}

// readTheFile says whether the watcher's last reload read the bytes now in path.
func (h *watched) readTheFile(path string) bool {
	h.w.reloadMu.Lock()
	defer h.w.reloadMu.Unlock()
	return h.w.read == digestOf(path)
}

func (h *watched) notified() []*Compiled {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*Compiled(nil), h.received...)
}

// startWatcher starts a Watcher on path and returns once its directory watch
// is live (touch, which rewrites the policy with new bytes and the same
// content, has caused an unchanged reload), with the reload counters back at zero.
func startWatcher(t *testing.T, path string, touch func(n int)) *watched {
	t.Helper()
	h := &watched{reg: prometheus.NewRegistry(), dir: filepath.Dir(path)}
	w, err := NewWatcher(WatcherConfig{Path: path, Registerer: h.reg, Debounce: 10 * time.Millisecond, Resync: time.Hour})
	if err != nil {
		t.Fatalf("NewWatcher: %v", err)
	}
	h.w = w
	w.Subscribe("recorder", SubscriberFunc(func(c *Compiled) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.received = append(h.received, c)
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	polls, n := 0, 0
	testwait.Until(t, "the watcher sees the directory", func() bool {
		if h.reloads(ReloadUnchanged) > 0 && h.readTheFile(path) {
			return true
		}
		// A touch every fourth poll (20ms), slower than the debounce, which
		// would otherwise keep putting the reload off.
		if polls%4 == 0 {
			n++
			touch(n)
		}
		polls++
		return false
	})
	// Start counting from zero. The probe's later events count nothing: they
	// read the bytes of its last touch, which a reload has read.
	w.reloads.Reset()
	return h
}

// rewrite is a touch for startWatcher: content with a comment that changes.
func rewrite(t *testing.T, path, content string) func(int) {
	return func(n int) { writeAtomically(t, path, fmt.Sprintf("%s# probe %d\n", content, n)) }
}

func TestWatcherPicksUpAnEdit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeAtomically(t, path, policyWithLimit(10))
	h := startWatcher(t, path, rewrite(t, path, policyWithLimit(10)))
	before := h.w.Current()

	writeAtomically(t, path, policyWithLimit(20))

	testwait.Until(t, "the new policy is running", func() bool { return h.w.Current().Hash != before.Hash })
	if got := h.w.Current().Budgets[0].Windows[0].Limit; got != 20 {
		t.Errorf("running limit = %d, want 20", got)
	}
	testwait.Until(t, "the subscriber is told", func() bool { return len(h.notified()) == 1 })
	if got := h.notified()[0]; got != h.w.Current() {
		t.Errorf("subscriber got policy %s, running is %s", got.Hash, h.w.Current().Hash)
	}
	if got := h.reloads(ReloadSuccess); got != 1 {
		t.Errorf("reloads{result=success} = %v, want 1", got)
	}
	if h.w.LastError() != "" {
		t.Errorf("LastError = %q, want none", h.w.LastError())
	}
}

func TestWatcherPicksUpAConfigMapSymlinkSwap(t *testing.T) {
	// The kubelet's layout: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>.
	dir := t.TempDir()
	version := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "policy.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_01_01_00_00_00.000000001", policyWithLimit(10))
	if err := os.Symlink("..2026_01_01_00_00_00.000000001", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "policy.yaml")
	if err := os.Symlink(filepath.Join("..data", "policy.yaml"), path); err != nil {
		t.Fatal(err)
	}
	// The swap: a new timestamped directory, a ..data_tmp link to it renamed over ..data.
	swap := func(name, content string) {
		version(name, content)
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	h := startWatcher(t, path, func(n int) {
		swap(fmt.Sprintf("..2026_01_01_00_00_00.%09d", n+100), fmt.Sprintf("%s# probe %d\n", policyWithLimit(10), n))
	})
	before := h.w.Current()

	swap("..2026_01_01_00_01_00.000000002", policyWithLimit(30))
	if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_00_00_00.000000001")); err != nil {
		t.Fatal(err)
	}

	testwait.Until(t, "the swapped policy is running", func() bool { return h.w.Current().Hash != before.Hash })
	if got := h.w.Current().Budgets[0].Windows[0].Limit; got != 30 {
		t.Errorf("running limit = %d, want 30", got)
	}
	testwait.Until(t, "the subscriber is told", func() bool { return len(h.notified()) == 1 })
	if h.reloads(ReloadFailure) != 0 {
		t.Errorf("the swap caused a failed reload: %s", h.w.LastError())
	}
}

func TestWatcherKeepsTheRunningPolicyOnABrokenEdit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeAtomically(t, path, policyWithLimit(10))
	h := startWatcher(t, path, rewrite(t, path, policyWithLimit(10)))
	before := h.w.Current()

	writeAtomically(t, path, brokenPolicy)

	testwait.Until(t, "the broken edit is refused", func() bool { return h.reloads(ReloadFailure) == 1 })
	if h.w.Current() != before {
		t.Errorf("running policy changed to %s after a broken edit", h.w.Current().Hash)
	}
	want := path + ": spec.budgets[0].windows[0].limit: Invalid value: 0: must be greater than 0"
	if got := h.w.LastError(); got != want {
		t.Errorf("LastError = %q, want %q", got, want)
	}
	if len(h.notified()) != 0 {
		t.Errorf("subscribers were told about a refused policy")
	}
	expected := `
# HELP kubedefender_policy_reloads_total Policy reloads after the file changed, by result: success, failure (the running policy was kept) or unchanged (new bytes, same policy).
# TYPE kubedefender_policy_reloads_total counter
kubedefender_policy_reloads_total{result="failure"} 1
`
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(expected), "kubedefender_policy_reloads_total"); err != nil {
		t.Error(err)
	}

	// Fixing the file clears the error and runs the fix.
	writeAtomically(t, path, policyWithLimit(15))
	testwait.Until(t, "the fixed policy is running", func() bool { return h.w.Current().Hash != before.Hash })
	if got := h.w.LastError(); got != "" {
		t.Errorf("LastError after the fix = %q, want none", got)
	}
}

func TestWatcherCountsUnchangedContentAsUnchanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeAtomically(t, path, policyWithLimit(10))
	h := startWatcher(t, path, rewrite(t, path, policyWithLimit(10)))
	before := h.w.Current()

	// Same content, other formatting: the defaulted policy is the same.
	writeAtomically(t, path, "# reformatted\n"+strings.Replace(policyWithLimit(10), "{window: 1m, limit: 10}", "{limit: 10, window: 60s}", 1))

	testwait.Until(t, "the rewrite is read", func() bool { return h.reloads(ReloadUnchanged) >= 1 })
	if h.w.Current() != before {
		t.Errorf("an unchanged policy was swapped in")
	}
	if h.reloads(ReloadSuccess) != 0 || len(h.notified()) != 0 {
		t.Errorf("unchanged content counted as success (%v) or notified subscribers (%d)", h.reloads(ReloadSuccess), len(h.notified()))
	}
}

// TestWatcherCountsNoReloadWhenTheFileDidNotChange: the minute's resync and
// events for other files of the directory (at startup: a certificate written
// next to the policy, the kubelet's own files) read the same bytes, which is
// no reload, and a refused file is not refused again every minute.
func TestWatcherCountsNoReloadWhenTheFileDidNotChange(t *testing.T) {
	w, path, reg := newIdleWatcher(t)
	metrics := func(success, failure, unchanged, ok int) string {
		return fmt.Sprintf(`
# HELP kubedefender_policy_last_reload_successful 1 when the policy file on disk is the running policy, 0 while its content is refused (the last good policy runs).
# TYPE kubedefender_policy_last_reload_successful gauge
kubedefender_policy_last_reload_successful %d
# HELP kubedefender_policy_reloads_total Policy reloads after the file changed, by result: success, failure (the running policy was kept) or unchanged (new bytes, same policy).
# TYPE kubedefender_policy_reloads_total counter
kubedefender_policy_reloads_total{result="failure"} %d
kubedefender_policy_reloads_total{result="success"} %d
kubedefender_policy_reloads_total{result="unchanged"} %d
`, ok, failure, success, unchanged)
	}
	check := func(when string, success, failure, unchanged, ok int) {
		t.Helper()
		if err := testutil.GatherAndCompare(reg, strings.NewReader(metrics(success, failure, unchanged, ok)),
			"kubedefender_policy_reloads_total", "kubedefender_policy_last_reload_successful"); err != nil {
			t.Errorf("%s: %v", when, err)
		}
	}
	check("at startup", 0, 0, 0, 1)
	for i := 0; i < 3; i++ {
		if err := w.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	check("after three reads of the file it started with", 0, 0, 0, 1)

	writeAtomically(t, path, brokenPolicy)
	for i := 0; i < 3; i++ {
		if err := w.Reload(); err == nil || !strings.Contains(err.Error(), "limit: Invalid value: 0") {
			t.Fatalf("reload %d of a broken file: %v, want its validation error", i, err)
		}
	}
	check("after three reads of one broken file", 0, 1, 0, 0)

	writeAtomically(t, path, "# a comment\n"+policyWithLimit(10))
	if err := w.Reload(); err != nil {
		t.Fatal(err)
	}
	check("after the running policy is written back with a comment", 0, 1, 1, 1)
	writeAtomically(t, path, policyWithLimit(11))
	if err := w.Reload(); err != nil {
		t.Fatal(err)
	}
	check("after an edit", 1, 1, 1, 1)
}

func TestNewWatcherRefusesToStartOnABadPolicy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeAtomically(t, path, brokenPolicy)
	_, err := NewWatcher(WatcherConfig{Path: path})
	if err == nil || !strings.Contains(err.Error(), "spec.budgets[0].windows[0].limit") {
		t.Fatalf("NewWatcher on a bad policy = %v, want the validation error", err)
	}
}

func TestWatcherRegistersItsMetricsOnTheGivenRegistry(t *testing.T) {
	_, path, reg := newIdleWatcher(t)
	expected := `
# HELP kubedefender_policy_rules Rules in the running policy (budgets + rate limits + flow schemas).
# TYPE kubedefender_policy_rules gauge
kubedefender_policy_rules 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), "kubedefender_policy_rules"); err != nil {
		t.Error(err)
	}
	// A second watcher on the same registry is refused, not a panic.
	if _, err := NewWatcher(WatcherConfig{Path: path, Registerer: reg}); err == nil {
		t.Error("a second watcher registered the same metrics")
	}
}

// recordingSubscriber logs its prepares and commits into a shared journal;
// refuse makes its prepare fail.
type recordingSubscriber struct {
	name    string
	refuse  error
	journal *[]string
}

func (r *recordingSubscriber) PreparePolicy(c *Compiled) (func(), error) {
	*r.journal = append(*r.journal, "prepare "+r.name)
	if r.refuse != nil {
		return nil, r.refuse
	}
	return func() { *r.journal = append(*r.journal, "commit "+r.name) }, nil
}

// TestAReloadIsPreparedByEverySubscriberBeforeAnyCommits: a policy any
// subscriber refuses is a failed reload: nothing commits, the running policy
// stays, and LastError names the subscriber (the proxy's priority levels
// used to be refused in a log line while the reload counted as a success).
func TestAReloadIsPreparedByEverySubscriberBeforeAnyCommits(t *testing.T) {
	refused := errors.New("priority level \"workload\" does not configure")
	for _, tc := range []struct {
		name        string
		refusedBy   string
		wantJournal []string
		wantErr     string
		wantResult  string
	}{
		{
			name:        "every subscriber prepares, then all commit in the order they subscribed",
			wantJournal: []string{"prepare engine", "prepare cascades", "prepare proxy", "commit engine", "commit cascades", "commit proxy"},
			wantResult:  ReloadSuccess,
		},
		{
			name:        "the last subscriber refuses: the others prepared but none commits",
			refusedBy:   "proxy",
			wantJournal: []string{"prepare engine", "prepare cascades", "prepare proxy"},
			wantErr:     "proxy refused policy ",
			wantResult:  ReloadFailure,
		},
		{
			name:        "the first subscriber refuses: the others are not asked",
			refusedBy:   "engine",
			wantJournal: []string{"prepare engine"},
			wantErr:     "engine refused policy ",
			wantResult:  ReloadFailure,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, path, _ := newIdleWatcher(t)
			var journal []string
			for _, name := range []string{"engine", "cascades", "proxy"} {
				s := &recordingSubscriber{name: name, journal: &journal}
				if name == tc.refusedBy {
					s.refuse = refused
				}
				w.Subscribe(name, s)
			}
			before := w.Current()

			writeAtomically(t, path, policyWithLimit(20))
			err := w.Reload()

			if !slices.Equal(journal, tc.wantJournal) {
				t.Errorf("journal = %q, want %q", journal, tc.wantJournal)
			}
			if got := testutil.ToFloat64(w.reloads.WithLabelValues(tc.wantResult)); got != 1 {
				t.Errorf("reloads_total{result=%q} = %v, want 1", tc.wantResult, got)
			}
			if tc.wantErr == "" {
				if err != nil || w.LastError() != "" {
					t.Fatalf("Reload = %v, LastError = %q, want neither", err, w.LastError())
				}
				if w.Current() == before || w.Current().Budgets[0].Windows[0].Limit != 20 {
					t.Errorf("the new policy is not running")
				}
				return
			}
			if !errors.Is(err, refused) || !strings.HasPrefix(err.Error(), tc.wantErr) {
				t.Errorf("Reload = %v, want %q… wrapping the refusal", err, tc.wantErr)
			}
			if got := w.LastError(); !strings.HasPrefix(got, tc.wantErr) || !strings.HasSuffix(got, refused.Error()) {
				t.Errorf("LastError = %q, want the subscriber and its error", got)
			}
			if w.Current() != before {
				t.Errorf("the running policy changed to %s after a refused reload", w.Current().Hash)
			}
			if got := testutil.ToFloat64(w.lastOK); got != 0 {
				t.Errorf("last_reload_successful = %v, want 0", got)
			}
			if got := testutil.ToFloat64(w.reloads.WithLabelValues(ReloadSuccess)); got != 0 {
				t.Errorf("reloads_total{result=success} = %v, want 0", got)
			}
		})
	}
}
