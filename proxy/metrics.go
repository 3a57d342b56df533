package proxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's collectors (namespace kubedefender, subsystem
// proxy). Labels are bounded: verbs, codes, rule and priority level names.
type metrics struct {
	requests   *prometheus.CounterVec
	added      prometheus.Histogram
	waiting    *prometheus.GaugeVec
	executing  *prometheus.GaugeVec
	seats      *prometheus.GaugeVec
	wait       *prometheus.HistogramVec
	rejections *prometheus.CounterVec
	upstream   *prometheus.CounterVec
	// missingState counts what stateOf reports: nothing unless the chain
	// is built wrong.
	missingState missingStateCounter
}

func newMetrics() *metrics {
	const ns, sub = "kubedefender", "proxy"
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Requests answered by the proxy, by Kubernetes verb and HTTP code (499: the client went away first)."}, []string{"verb", "code"}),
		added: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "added_latency_seconds",
			Help:    "Time the proxy adds before a response starts: total less queue wait and the upstream's own time.",
			Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3}}),
		waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "queue_length",
			Help: "Requests waiting in a priority level's queues."}, []string{"priority_level"}),
		executing: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "executing",
			Help: "Requests holding a seat of a priority level."}, []string{"priority_level"}),
		seats: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "seats",
			Help: "Seats (concurrency limit) of a priority level."}, []string{"priority_level"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "queue_wait_seconds",
			Help:    "Time a request waited for a seat of its priority level (dispatched or not).",
			Buckets: []float64{1e-4, 1e-3, 5e-3, 25e-3, 100e-3, 250e-3, 1, 2.5, 5, 15, 60}}, []string{"priority_level"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rejections_total",
			Help: "Requests the proxy refused, by kind (rateLimit, budget, priorityLevel), rule or level name, and reason."}, []string{"kind", "rule", "reason"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "upstream_errors_total",
			Help: "Requests that failed to reach the upstream API server, answered 503."}, []string{"verb"}),
		missingState: missingStateCounter{desc: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "missing_request_state_total"),
			"Requests a filter saw without the state the chain's first filter gives them, so the filters did not share what they learned: a bug, exposed only once it happened. Counted across the process.",
			nil, nil)},
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.requests, m.added, m.waiting, m.executing, m.seats, m.wait, m.rejections, m.upstream, m.missingState} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("failed to register proxy metrics: %w", err)
		}
	}
	return nil
}

// missingStateCounter exposes missingStates, like a vector without children,
// only once it is not zero: a healthy proxy shows no such series.
type missingStateCounter struct{ desc *prometheus.Desc }

func (c missingStateCounter) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c missingStateCounter) Collect(ch chan<- prometheus.Metric) {
	if n := missingStates.Load(); n > 0 {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n))
	}
}
