package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunReloadsOnceAfterABurstAndOnASymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	// A ConfigMap mount: file -> ..data/file, ..data -> a timestamped directory.
	v1 := filepath.Join(dir, "..v1")
	if err := os.Mkdir(v1, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v1, "f"), []byte("1"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "f")
	if err := os.Symlink("..data/f", file); err != nil {
		t.Fatal(err)
	}
	var reloads atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Files: []string{file}, Debounce: 50 * time.Millisecond, Reload: func() { reloads.Add(1) }})
	}()
	waitFor := func(what string, n int64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for reloads.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d reloads, want %d", what, reloads.Load(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(100 * time.Millisecond) // the watch is registered
	// When the kubelet swaps the data directory (a burst of events)
	v2 := filepath.Join(dir, "..v2")
	if err := os.Mkdir(v2, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v2, "f"), []byte("2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	// Then one reload follows once the burst settles
	waitFor("after the swap", 1)
	time.Sleep(200 * time.Millisecond)
	if n := reloads.Load(); n != 1 {
		t.Fatalf("a burst of events caused %d reloads, want 1", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRunFailsClearlyOnAMissingDirectory(t *testing.T) {
	err := Run(context.Background(), Config{Files: []string{"/nonexistent/dir/f"}, Reload: func() {}})
	if err == nil {
		t.Fatal("want an error")
	}
}
