package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
)

// runner lets the demo use e2e/framework, whose helpers take a testing.TB,
// outside `go test`. It implements the methods the framework calls; the
// embedded nil testing.TB only supplies the interface's unexported method
// (calling anything else panics, which the demo never does).
type runner struct {
	testing.TB
	log io.Writer

	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

var _ testing.TB = (*runner)(nil)

// errFatal unwinds a Fatalf to main, which runs the cleanups and exits 1.
type errFatal struct{ msg string }

func (r *runner) Helper()                  {}
func (r *runner) Name() string             { return "kubedefender-demo" }
func (r *runner) Context() context.Context { return context.Background() }

func (r *runner) Logf(format string, args ...any) { fmt.Fprintf(r.log, "    "+format+"\n", args...) }
func (r *runner) Log(args ...any)                 { fmt.Fprintln(r.log, append([]any{"   "}, args...)...) }

func (r *runner) Errorf(format string, args ...any) {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
	fmt.Fprintf(os.Stderr, "ERROR: "+format+"\n", args...)
}

func (r *runner) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }

func (r *runner) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
	panic(errFatal{msg: fmt.Sprintf(format, args...)})
}

func (r *runner) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }

func (r *runner) FailNow() { r.Fatalf("failed") }

func (r *runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *runner) TempDir() string {
	dir, err := os.MkdirTemp("", "kubedefender-demo-")
	if err != nil {
		r.Fatalf("failed to create a temporary directory: %v", err)
	}
	r.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// cleanup runs the registered cleanups, last first, once.
func (r *runner) cleanup() {
	r.mu.Lock()
	cs := r.cleanups
	r.cleanups = nil
	r.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}
