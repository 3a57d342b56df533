package replay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"

	"sigs.k8s.io/yaml"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// Readable rounds x up to the next 1, 2 or 5 times a power of ten (at least 1).
func Readable(x float64) int64 {
	if !(x > 1) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v := m * p; v >= x-1e-9 {
			return int64(math.Round(v))
		}
	}
	return int64(math.Ceil(x))
}

// Suggest returns the input policy (as decoded from its file, so its rules,
// keys, windows and comments-free defaults stay as written) with each
// budget window's limit set to the peak the replay saw in that window for
// the busiest key times headroom, and each rate limit's qps and burst set
// from the busiest key's peak requests within one second the same way,
// every number rounded up by Readable. A rule the log never exercised keeps
// its numbers. Replayed against the same log, the result denies nothing:
// with no denial each window holds exactly what the replay's demand engine
// saw, which is at most its new limit; a bucket whose qps and burst are at
// least the most requests a key made within any second never runs dry.
func (r *Report) Suggest(in *policy.DefenderPolicy, headroom float64) (*policy.DefenderPolicy, error) {
	if headroom < 1 {
		return nil, fmt.Errorf("failed to suggest: headroom %v must be at least 1", headroom)
	}
	out, err := copyPolicy(in)
	if err != nil {
		return nil, err
	}
	for i := range out.Spec.Budgets {
		b := &out.Spec.Budgets[i]
		rs := r.states[ruleKey(limiter.KindBudget, b.Name)]
		if rs == nil {
			continue
		}
		var prev int64
		for j := range b.Windows {
			if j >= len(rs.peaks) || rs.peaks[j].used == 0 {
				continue
			}
			l := max(Readable(float64(rs.peaks[j].used)*headroom), prev)
			b.Windows[j].Limit, prev = l, l
		}
		// Windows must not shrink in limit as they grow; a window the log
		// never filled keeps its input limit unless that is now too small.
		for j := 1; j < len(b.Windows); j++ {
			b.Windows[j].Limit = max(b.Windows[j].Limit, b.Windows[j-1].Limit)
		}
	}
	for i := range out.Spec.RateLimits {
		rl := &out.Spec.RateLimits[i]
		rs := r.states[ruleKey(limiter.KindRateLimit, rl.Name)]
		if rs == nil || rs.peaks[0].used == 0 {
			continue
		}
		v := min(Readable(float64(rs.peaks[0].used)*headroom), policy.MaxBurst)
		rl.QPS, rl.Burst = float64(v), v
	}
	return out, nil
}

// WriteSuggestion writes a suggested policy as YAML with a header saying
// where its numbers come from.
func (r *Report) WriteSuggestion(w io.Writer, p *policy.DefenderPolicy, headroom float64) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("failed to write the suggested policy: %w", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("failed to write the suggested policy: %w", err)
	}
	js, err := yaml.Marshal(prune(doc))
	if err != nil {
		return fmt.Errorf("failed to write the suggested policy: %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Suggested by kubedefender replay from %d requests (%s to %s):\n", r.Events, stamp(r.From), stamp(r.To))
	fmt.Fprintf(&b, "# each limit is the busiest key's peak in its window times %g, rounded up to 1, 2 or 5 x 10^n;\n", headroom)
	b.WriteString("# qps and burst are the busiest key's most requests within one second, the same way.\n")
	b.WriteString("# Rules the log never exercised keep their numbers. Replayed against the same log, it denies nothing.\n")
	b.Write(js)
	if _, err := w.Write(b.Bytes()); err != nil {
		return fmt.Errorf("failed to write the suggested policy: %w", err)
	}
	return nil
}

// prune drops what the decoded policy holds only as zero values (the
// durations cooldown and maxDuration at "0s", objects left empty), so the
// suggestion reads like the input.
func prune(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if (k == "cooldown" || k == "maxDuration") && e == "0s" {
				delete(x, k)
				continue
			}
			if m, ok := e.(map[string]any); ok && prune(m) == nil {
				delete(x, k)
				continue
			}
			prune(e)
		}
		if len(x) == 0 {
			return nil
		}
	case []any:
		for _, e := range x {
			prune(e)
		}
	}
	return v
}
