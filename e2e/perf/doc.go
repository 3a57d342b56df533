// Package perf measures the proxy against the real API server the e2e
// framework builds. It holds benchmarks only: `go test ./...` compiles them
// and runs nothing; `make bench-apiserver` runs them (go test -bench).
//
// BenchmarkAPIServerLists puts the same load (LIST of a few ConfigMaps by a
// token user who is not exempt, from 16 concurrent clients) on three targets
// in alternating rounds within one run: the kube-apiserver directly, a bare
// httputil.ReverseProxy that passes the token on, and KubeDefender's proxy
// with front-proxy authentication, the cached TokenReview, and the example
// production policy's rate limits (raised so that they evaluate every
// request without denying one) and priority levels. It prints throughput,
// p50 and p99 per target and the ratios between them.
//
// The KubeDefender proxy and the bare proxy run in the benchmark's process,
// so -cpuprofile and -memprofile see them. Their goroutines carry the pprof
// label "target" (kubedefender, bare) and the load generator's "target"
// client, so that one target's work can be told apart:
//
//	go tool pprof -tagfocus target=kubedefender perf.test cpu.out
package perf
