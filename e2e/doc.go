// Package e2e holds KubeDefender's end-to-end scenarios, run by `make test`
// against a real kube-apiserver, etcd and (where cascades matter)
// kube-controller-manager built from source by e2e/tools and started by
// e2e/framework, with real clients (client-go and kubectl) and, where state
// is shared, a real redis-server. Each scenario reads Given / When / Then.
//
//   - webhook_test.go: budgets, breakers, dry run, evictions, exclusions,
//     cascades, shadow mode, reload, failure policies, the real binary;
//   - proxy_test.go: the proxy in both auth modes, spoofed identity headers,
//     watch latency, upgrades, rate limits, fairness, upstream loss;
//   - serve_test.go: one `kubedefender serve` with proxy, webhook and Redis;
//   - replicas_test.go: two webhook replicas sharing one budget over Redis;
//   - breakglass_test.go: an incident, the override, its expiry;
//   - deploy_test.go: every manifest applied with a server-side dry run.
//
// Nothing skips: a missing binary or redis-server fails with the command
// that provides it.
package e2e
