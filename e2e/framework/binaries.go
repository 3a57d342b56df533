package framework

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

const (
	// EnvBinDir names a directory holding etcd, kube-apiserver and
	// kube-controller-manager. When set, it is used as is and nothing is built.
	EnvBinDir = "KUBEDEFENDER_CONTROLPLANE_BIN"
	// EnvBuild, set to "1", lets FindBinaries run e2e/tools/build.sh when the
	// cache is empty. A cold build takes about 10 minutes: raise go test's
	// -timeout accordingly.
	EnvBuild = "KUBEDEFENDER_E2E_BUILD"
	// EnvKeep, set to "1", keeps each control plane's directory (PKI,
	// kubeconfigs, logs, etcd data) after the test instead of removing it.
	EnvKeep = "KUBEDEFENDER_E2E_KEEP"
)

// Binaries are the executables of one control plane build.
type Binaries struct {
	Dir                   string
	Etcd                  string
	KubeAPIServer         string
	KubeControllerManager string
}

func binariesIn(dir string) (Binaries, error) {
	b := Binaries{
		Dir:                   dir,
		Etcd:                  filepath.Join(dir, "etcd"),
		KubeAPIServer:         filepath.Join(dir, "kube-apiserver"),
		KubeControllerManager: filepath.Join(dir, "kube-controller-manager"),
	}
	var missing []string
	for _, p := range []string{b.Etcd, b.KubeAPIServer, b.KubeControllerManager} {
		if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			missing = append(missing, filepath.Base(p))
		}
	}
	if len(missing) > 0 {
		return b, fmt.Errorf("failed to find %s in %s", strings.Join(missing, ", "), dir)
	}
	return b, nil
}

// BuildScript returns the path of e2e/tools/build.sh in the source tree this
// package was compiled from.
func BuildScript() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("failed to locate the framework's source file")
	}
	p := filepath.Join(filepath.Dir(file), "..", "tools", "build.sh")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("failed to find build.sh next to the framework source (built with -trimpath?): %w", err)
	}
	return p, nil
}

var (
	findOnce   sync.Once
	findResult Binaries
	findErr    error
)

// FindBinaries locates the control plane executables, once per test binary:
//
//  1. $KUBEDEFENDER_CONTROLPLANE_BIN, if set;
//  2. the cache directory that `e2e/tools/build.sh --check` names for the
//     current pins (it builds nothing);
//  3. with KUBEDEFENDER_E2E_BUILD=1, whatever `e2e/tools/build.sh` builds.
//
// The error says how to build the binaries.
func FindBinaries() (Binaries, error) {
	findOnce.Do(func() { findResult, findErr = findBinaries() })
	return findResult, findErr
}

func findBinaries() (Binaries, error) {
	if dir := os.Getenv(EnvBinDir); dir != "" {
		b, err := binariesIn(dir)
		if err != nil {
			return b, fmt.Errorf("%s=%s: %w", EnvBinDir, dir, err)
		}
		return b, nil
	}
	script, err := BuildScript()
	if err != nil {
		return Binaries{}, fmt.Errorf("%w; set %s to a directory with etcd, kube-apiserver and kube-controller-manager", err, EnvBinDir)
	}
	dir, checkErr := runBuildScript(script, "--check")
	if checkErr == nil {
		return binariesIn(dir)
	}
	if os.Getenv(EnvBuild) != "1" {
		return Binaries{}, fmt.Errorf("control plane binaries are not built (%s is empty): run `bash %s` once "+
			"(about 10 minutes on a cold Go cache; instant afterwards), or set %s=1 to build from the test "+
			"(with -timeout 30m), or point %s at a directory with etcd, kube-apiserver and kube-controller-manager",
			dir, script, EnvBuild, EnvBinDir)
	}
	dir, err = runBuildScript(script)
	if err != nil {
		return Binaries{}, err
	}
	return binariesIn(dir)
}

// runBuildScript runs build.sh and returns the last line of its stdout (the
// bin directory). Its stderr is passed through so that a long build shows
// progress.
func runBuildScript(script string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", append([]string{script}, args...)...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if len(args) == 0 {
		cmd.Stderr = os.Stderr
	}
	runErr := cmd.Run()
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := strings.TrimSpace(lines[len(lines)-1])
	if runErr != nil {
		return dir, fmt.Errorf("failed to run %s %s: %w: %s", script, strings.Join(args, " "), runErr, strings.TrimSpace(stderr.String()))
	}
	if dir == "" {
		return "", fmt.Errorf("failed to read the bin dir from %s: empty output", script)
	}
	return dir, nil
}
