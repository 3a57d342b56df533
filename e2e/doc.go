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
//   - deploy_test.go: every manifest applied with a server-side dry run;
//     deploy_choices_test.go, deploy_redis_test.go: what the shipped
//     manifests promise (one replica on memory, Redis password and
//     append-only file keeping a Manual breaker Open across a restart);
//   - webhook_auth_test.go: the API server authenticates to the webhook with
//     a client certificate; forged reviews get no answer and change nothing;
//   - webhook_attack_test.go: dry-run drains, recreated pods under an open
//     breaker, scale to zero — judged as the API server executes them;
//   - proxy_budgets_test.go: budgets at the proxy judge PATCH, body dry runs,
//     deletecollection and break-glass as the API server does;
//   - exemptions_test.go: Leases and Events never reach the webhook, the
//     namespace label only where the policy allows it;
//   - override_creator_test.go: an Override's requestedBy is its creator;
//   - replica_warning_test.go: a memory store warns beside other replicas;
//   - replay_test.go: replay of the audit log reports the live denials;
//   - cascade_counter_test.go: the blast-radius counter against real
//     workloads, nodes and default propagation;
//   - helm_test.go, metricnames_test.go: the chart linted, dry-run and
//     installed; the metric names the dashboard and alerts read.
//
// Nothing skips: a missing binary or redis-server fails with the command
// that provides it.
package e2e
