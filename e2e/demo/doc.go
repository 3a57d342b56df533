// Command demo shows KubeDefender stopping a mass delete on a real, local
// control plane (etcd + kube-apiserver built from source by e2e/tools):
//
//	go run ./e2e/demo          # what `make demo` runs
//	go run ./e2e/demo -wait    # keep the cluster up afterwards, until Ctrl-C
//
// It builds what is missing (the control plane takes about 10 minutes on a
// fresh machine, then comes from the cache), starts the control plane, runs
// `kubedefender serve` with a policy of 10 pod deletes per minute per
// namespace and a Manual breaker, registers it with `kubedefender webhook
// config --apply`, creates 30 pods and runs `kubectl delete pods --all`. The
// breaker stops the delete after 10 pods; the demo prints the denial and the
// webhook's counters, runs the break-glass command the denial names, and
// tears everything down. It needs go and kubectl on PATH.
package main
