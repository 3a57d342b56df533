package webhook

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of one admission request, the values of the result label.
const (
	ResultAllowed    = "allowed"
	ResultDenied     = "denied"
	ResultShadow     = "shadow"
	ResultExempt     = "exempt"
	ResultIgnored    = "ignored"
	ResultRepeat     = "repeat"
	ResultTimeout    = "timeout"
	ResultBadRequest = "bad_request"
	ResultError      = "error"
	// ResultCascade: a follow-up of a charged root (a pod the namespace,
	// garbage-collector or ReplicaSet controller deletes) admitted free by
	// the AtRoot budgets and charged by no other.
	ResultCascade = "cascade"
)

// operations are the admission operations, pre-resolved for the hot path.
var operations = []string{"CREATE", "UPDATE", "DELETE", "CONNECT", ""}

var results = []string{ResultAllowed, ResultDenied, ResultShadow, ResultExempt, ResultIgnored, ResultRepeat, ResultTimeout, ResultBadRequest, ResultError, ResultCascade}

// metrics are the webhook's Prometheus metrics. Labels are bounded: the
// operation is one of five values (anything else is counted as "").
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// counters and durations are the series of requests and duration, by
	// index in operations and results: the hot path neither hashes labels
	// nor looks them up.
	counters  [][]prometheus.Counter
	durations []prometheus.Observer
}

func newMetrics() *metrics {
	const ns, sub = "kubedefender", "webhook"
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "AdmissionReviews answered, by operation (CREATE, UPDATE, DELETE, CONNECT, \"\" when undecodable) and result (allowed, denied, shadow, exempt, ignored, repeat, timeout, bad_request, error, cascade)."},
			[]string{"operation", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "request_duration_seconds",
			Help:    "Time from an AdmissionReview's body being read to its answer being written, by operation.",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}},
			[]string{"operation"}),
	}
	for _, op := range operations {
		m.durations = append(m.durations, m.duration.WithLabelValues(op))
		counters := make([]prometheus.Counter, 0, len(results))
		for _, r := range results {
			counters = append(counters, m.requests.WithLabelValues(op, r))
		}
		m.counters = append(m.counters, counters)
	}
	return m
}

// count counts one request of the operation (an opLabel) with the result
// (one of results).
func (m *metrics) count(op, result string) {
	oi := opIndex(op)
	for ri, r := range results {
		if r == result {
			m.counters[oi][ri].Inc()
			return
		}
	}
	m.requests.WithLabelValues(op, result).Inc()
}

// observe records how long a request of the operation (an opLabel) took.
func (m *metrics) observe(op string, seconds float64) { m.durations[opIndex(op)].Observe(seconds) }

// opIndex is the index of op in operations; anything else is "", the last.
func opIndex(op string) int {
	for i, o := range operations {
		if o == op {
			return i
		}
	}
	return len(operations) - 1
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.requests, m.duration} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("failed to register webhook metrics: %w", err)
		}
	}
	return nil
}

// opLabel bounds the operation label.
func opLabel(op string) string { return operations[opIndex(op)] }
