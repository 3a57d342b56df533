// Package rulestest tests deploy/monitoring/alerts.yaml with Prometheus's own
// code: every expression is parsed by the PromQL parser, and the rules are
// evaluated against recorded series (deploy/monitoring/alerts_test.yaml, in
// promtool's test-file format) the way `promtool test rules` does, stepping
// the rule group through time and comparing the firing alerts.
//
// It is a Go module of its own so that the main module does not depend on
// github.com/prometheus/prometheus; `make test` runs it.
package rulestest
