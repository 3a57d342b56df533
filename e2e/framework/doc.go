// Package framework starts a real Kubernetes control plane — etcd,
// kube-apiserver and, on request, kube-controller-manager — for KubeDefender's
// end-to-end tests.
//
// The binaries are built from the Go module proxy by e2e/tools/build.sh into a
// cache directory outside the repository (see FindBinaries). Start generates a
// fresh PKI for every control plane (cluster CA, serving certificate, admin
// client certificate, a front-proxy CA and client certificate, a
// service-account key pair and a static token file with the users "admin",
// "alice" and "bob"), starts each process on free loopback ports with its own
// temporary data directory, waits until it is healthy, and registers a
// t.Cleanup that kills every process group it started. Processes also die with
// the test binary (Pdeathsig), so a panicking or timed-out test leaves no
// orphans.
//
// A missing binary is a test failure, never a skip.
package framework
