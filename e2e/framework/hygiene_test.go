package framework

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const childEnv = "KUBEDEFENDER_E2E_HYGIENE_CHILD"

// TestHelperControlPlaneChild is not a test on its own: TestNoOrphanProcesses
// runs the test binary again with childEnv set, and this function then starts
// a control plane, records its pids and ends the way childEnv says.
func TestHelperControlPlaneChild(t *testing.T) {
	mode := os.Getenv(childEnv)
	if mode == "" {
		return // only meaningful as a child process
	}
	cp := Start(t, Options{})
	var pids []string
	for _, p := range cp.procs {
		pids = append(pids, strconv.Itoa(p.cmd.Process.Pid))
	}
	if err := os.WriteFile(os.Getenv(childEnv+"_PIDS"), []byte(strings.Join(pids, "\n")), 0o644); err != nil {
		t.Fatalf("failed to write pids: %v", err)
	}
	switch mode {
	case "panic":
		panic("deliberate panic to prove t.Cleanup still stops the control plane")
	case "hang":
		time.Sleep(time.Hour) // the parent kills the test binary with SIGKILL
	}
}

func TestNoOrphanProcesses(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode string
	}{
		{name: "a panicking test stops its processes in t.Cleanup", mode: "panic"},
		{name: "a killed test binary takes its processes with it", mode: "hang"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Given a test binary that starts a control plane
			pidFile := filepath.Join(t.TempDir(), "pids")
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperControlPlaneChild$", "-test.v")
			cmd.Env = append(os.Environ(), childEnv+"="+tc.mode, childEnv+"_PIDS="+pidFile)
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatalf("failed to start the child test binary: %v", err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()

			// When it panics, or is killed once the control plane is up
			pids := waitForPIDs(t, pidFile, done, &out)
			if tc.mode == "hang" {
				_ = cmd.Process.Kill()
			}
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("child test binary did not end within 30s; output:\n%s", out.String())
			}

			// Then none of its control plane processes is left
			deadline := time.Now().Add(10 * time.Second)
			for _, pid := range pids {
				for alive(pid) {
					if time.Now().After(deadline) {
						_ = syscall.Kill(pid, syscall.SIGKILL)
						t.Fatalf("process %d outlived its test binary; child output:\n%s", pid, out.String())
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		})
	}
}

func waitForPIDs(t *testing.T, pidFile string, done chan error, out fmt.Stringer) []int {
	t.Helper()
	deadline := time.After(90 * time.Second)
	for {
		if b, err := os.ReadFile(pidFile); err == nil && len(b) > 0 {
			var pids []int
			for _, f := range strings.Fields(string(b)) {
				pid, err := strconv.Atoi(f)
				if err != nil {
					t.Fatalf("failed to parse pid %q: %v", f, err)
				}
				pids = append(pids, pid)
			}
			if len(pids) != 2 {
				t.Fatalf("child started %d processes, want 2 (etcd, kube-apiserver)", len(pids))
			}
			return pids
		}
		select {
		case err := <-done:
			if b, rerr := os.ReadFile(pidFile); rerr == nil && len(b) > 0 {
				// The child wrote its pids and ended (the panic case) between
				// our read and this select: hand its end back to the caller.
				done <- err
				continue
			}
			t.Fatalf("child test binary ended (%v) before starting a control plane; output:\n%s", err, out.String())
		case <-deadline:
			t.Fatalf("child test binary did not start a control plane within 90s; output:\n%s", out.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// alive reports whether pid still names a process that is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Field 3, after "pid (comm)", is the state; Z is a zombie awaiting reaping.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}
