// Package benchstat holds what the load benchmarks compute from their rounds:
// one round's latencies summarized, rounds pooled, and the median over rounds
// of one target's throughput against another's measured in the same round (a
// stalled round cannot move it). The proxy's in-process benchmark and the API
// server benchmark share it.
package benchstat

import (
	"slices"
	"time"
)

// Round is one or more rounds of load against one target.
type Round struct {
	N        int
	Elapsed  time.Duration
	Lats     []time.Duration // sorted
	P50, P99 time.Duration
	Errors   int64
	FirstErr string
}

// QPS is completed requests per second of the round's time.
func (r Round) QPS() float64 { return float64(r.N) / r.Elapsed.Seconds() }

// Summarize sorts lats and takes their percentiles.
func Summarize(lats []time.Duration, elapsed time.Duration, errors int64, firstErr string) Round {
	slices.Sort(lats)
	r := Round{N: len(lats), Elapsed: elapsed, Lats: lats, Errors: errors, FirstErr: firstErr}
	if len(lats) > 0 {
		r.P50, r.P99 = lats[len(lats)/2], lats[len(lats)*99/100]
	}
	return r
}

// Merge pools rounds: requests over their summed time, percentiles over all
// their latencies, the first error seen.
func Merge(rs []Round) Round {
	var (
		lats     []time.Duration
		elapsed  time.Duration
		errors   int64
		firstErr string
	)
	for _, r := range rs {
		lats = append(lats, r.Lats...)
		elapsed += r.Elapsed
		errors += r.Errors
		if firstErr == "" {
			firstErr = r.FirstErr
		}
	}
	return Summarize(lats, elapsed, errors, firstErr)
}

// MedianRatio is the median over rounds of a's throughput over b's in the
// same round.
func MedianRatio(a, b []Round) float64 {
	var xs []float64
	for i := range min(len(a), len(b)) {
		xs = append(xs, a[i].QPS()/b[i].QPS())
	}
	return Median(xs)
}

// Median of xs (the mean of the two middle values for an even count); 0 for
// none. xs is sorted in place.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	return (xs[(len(xs)-1)/2] + xs[len(xs)/2]) / 2
}
