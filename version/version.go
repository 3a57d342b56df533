// Package version holds the build's version, set at link time:
//
//	go build -ldflags "-X github.com/kubedefender/kubedefender/version.Version=v0.1.0 -X ...Commit=abc"
package version

import (
	"fmt"
	"runtime"
)

// Set by -ldflags -X at build time.
var (
	Version = "v0.0.0-dev"
	Commit  = "unknown"
	Date    = "unknown"
)

// String is the one-line version report.
func String() string {
	return fmt.Sprintf("kubedefender %s (commit %s, built %s, %s %s/%s)", Version, Commit, Date, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
