// Command kubedefender guards a Kubernetes API server (see the README and
// docs/). main only runs the root command of package app and exits with its code.
package main

import (
	"os"

	"github.com/kubedefender/kubedefender/cmd/kubedefender/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
