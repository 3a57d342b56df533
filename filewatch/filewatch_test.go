package filewatch

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/internal/logtest"
	"github.com/kubedefender/kubedefender/internal/testwait"
)

var t0 = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)

func TestRunReloadsAfterAConfigMapSymlinkSwap(t *testing.T) {
	// Given a ConfigMap mount: file -> ..data/file, ..data -> a timestamped directory
	dir := t.TempDir()
	writeDataDir(t, dir, "..v1", "1")
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "f")
	if err := os.Symlink("..data/f", file); err != nil {
		t.Fatal(err)
	}
	// and a watch of it on a fake clock
	clk := clocktesting.NewFakeClock(t0)
	var reloads atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Files: []string{file}, Debounce: 50 * time.Millisecond, Resync: time.Hour, Clock: clk,
			Reload: func() { reloads.Add(1) }})
	}()
	// Run starts its resync ticker once the directory is watched.
	testwait.Until(t, "the directory is watched", clk.HasWaiters)

	// When the kubelet swaps the data directory
	writeDataDir(t, dir, "..v2", "2")
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}

	// Then the events arm the debounce, and once it passes the file is reloaded.
	// (Events still in flight re-arm it, so the clock steps a debounce at a time.)
	testwait.Until(t, "an event arms the debounce", func() bool { return clk.Waiters() > 1 })
	if n := reloads.Load(); n != 0 {
		t.Fatalf("%d reloads before the debounce passed, want 0", n)
	}
	testwait.Until(t, "the swap is reloaded", func() bool {
		if reloads.Load() == 0 && clk.Waiters() > 1 {
			clk.Step(50 * time.Millisecond)
		}
		return reloads.Load() > 0
	})
	if n := reloads.Load(); n != 1 {
		t.Fatalf("the swap caused %d reloads, want 1", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// writeDataDir writes a timestamped directory name of a ConfigMap mount in
// dir, as the kubelet does, holding file f with content.
func writeDataDir(t *testing.T, dir, name, content string) {
	t.Helper()
	v := filepath.Join(dir, name)
	if err := os.Mkdir(v, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v, "f"), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestRunFailsClearlyOnAMissingDirectory(t *testing.T) {
	err := Run(context.Background(), Config{Files: []string{"/nonexistent/dir/f"}, Reload: func() {}})
	if err == nil || !strings.Contains(err.Error(), "failed to watch directory /nonexistent/dir") {
		t.Fatalf("Run on a missing directory: %v, want it named", err)
	}
}

// loopHarness runs loop on channels the test feeds and a fake clock.
type loopHarness struct {
	clk      *clocktesting.FakeClock
	events   chan fsnotify.Event
	errs     chan error
	reloaded chan struct{}
	logs     *logtest.Buffer
}

func startLoop(t *testing.T, debounce, resync time.Duration) *loopHarness {
	t.Helper()
	h := &loopHarness{clk: clocktesting.NewFakeClock(t0), events: make(chan fsnotify.Event), errs: make(chan error),
		reloaded: make(chan struct{}, 100), logs: &logtest.Buffer{}}
	cfg := Config{Files: []string{"/etc/kd/f"}, Debounce: debounce, Resync: resync, Clock: h.clk,
		Logger: slog.New(slog.NewTextHandler(h.logs, nil)), Reload: func() { h.reloaded <- struct{}{} }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- loop(ctx, cfg, h.events, h.errs) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("loop: %v", err)
		}
	})
	if resync > 0 {
		testwait.Until(t, "the resync ticker starts", h.clk.HasWaiters)
	}
	return h
}

// settle returns once loop has handled everything sent before: an unbuffered
// send completes only when loop is back in its select (a chmod changes
// nothing). Sent twice, so a reload that is ready loses the race at most
// once per send.
func (h *loopHarness) settle() {
	for range 2 {
		h.events <- fsnotify.Event{Name: "/etc/kd/f", Op: fsnotify.Chmod}
	}
}

// expectReloads waits for n reloads and checks no other is pending.
func (h *loopHarness) expectReloads(t *testing.T, n int, when string) {
	t.Helper()
	for i := range n {
		select {
		case <-h.reloaded:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: %d reloads, want %d", when, i, n)
		}
	}
	h.settle()
	if extra := len(h.reloaded); extra > 0 {
		t.Fatalf("%s: %d reloads, want %d", when, n+extra, n)
	}
}

func TestLoopDebouncesAndResyncs(t *testing.T) {
	const debounce = 50 * time.Millisecond
	ev := func(op fsnotify.Op) fsnotify.Event { return fsnotify.Event{Name: "/etc/kd/..data", Op: op} }
	cases := []struct {
		name   string
		resync time.Duration
		run    func(t *testing.T, h *loopHarness)
	}{
		{name: "a burst of events reloads once, when the events have settled for the debounce", run: func(t *testing.T, h *loopHarness) {
			for _, op := range []fsnotify.Op{fsnotify.Create, fsnotify.Create, fsnotify.Rename, fsnotify.Create} {
				h.events <- ev(op)
			}
			h.settle()
			h.clk.Step(debounce - time.Nanosecond)
			h.expectReloads(t, 0, "just before the debounce")
			h.clk.Step(time.Nanosecond)
			h.expectReloads(t, 1, "at the debounce")
			h.clk.Step(10 * debounce)
			h.expectReloads(t, 0, "long after")
		}},
		{name: "each event restarts the debounce", run: func(t *testing.T, h *loopHarness) {
			h.events <- ev(fsnotify.Write)
			h.settle()
			h.clk.Step(debounce - time.Nanosecond)
			h.events <- ev(fsnotify.Write)
			h.settle()
			h.clk.Step(time.Nanosecond)
			h.expectReloads(t, 0, "a debounce after the first event")
			h.clk.Step(debounce - time.Nanosecond)
			h.expectReloads(t, 1, "a debounce after the second event")
		}},
		{name: "a chmod alone reloads nothing", run: func(t *testing.T, h *loopHarness) {
			h.events <- ev(fsnotify.Chmod)
			h.settle()
			h.clk.Step(10 * debounce)
			h.expectReloads(t, 0, "after a chmod")
		}},
		{name: "a resync reloads without events, every period", resync: time.Minute, run: func(t *testing.T, h *loopHarness) {
			h.clk.Step(time.Minute - time.Nanosecond)
			h.expectReloads(t, 0, "before the first resync")
			h.clk.Step(time.Nanosecond)
			h.expectReloads(t, 1, "at the first resync")
			h.clk.Step(time.Minute)
			h.expectReloads(t, 1, "at the second resync")
		}},
		{name: "a watch error is logged and the watch goes on", run: func(t *testing.T, h *loopHarness) {
			h.errs <- errors.New("queue overflow")
			h.events <- ev(fsnotify.Write)
			h.settle()
			h.clk.Step(debounce)
			h.expectReloads(t, 1, "after the error")
			if logs := h.logs.String(); !strings.Contains(logs, `msg="file watch error"`) || !strings.Contains(logs, "queue overflow") {
				t.Errorf("the watch error is not logged:\n%s", logs)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, startLoop(t, debounce, tc.resync))
		})
	}
}
