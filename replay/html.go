package replay

import (
	"bytes"
	"fmt"
	"html"
	"io"
	"strings"
	"time"
)

// Chart geometry (SVG user units).
const (
	chartW, chartH = 900, 220
	padL, padR     = 60, 20
	padT, padB     = 16, 30
	chartLines     = 3 // busiest keys drawn per window
)

var lineColors = []string{"#1f77b4", "#2ca02c", "#9467bd"}

// WriteHTML writes one self-contained page: the summary, then per rule and
// window an inline SVG chart of the busiest keys' usage over time against
// the limit, with a red tick where a request would have been denied and an
// orange triangle where a breaker would have tripped. No script, font or
// image comes from elsewhere.
func (r *Report) WriteHTML(w io.Writer) error {
	var b bytes.Buffer
	b.WriteString(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kubedefender replay</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#222;max-width:1000px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:90%}
th{background:#f4f4f4}.over{color:#c0392b;font-weight:bold}.muted{color:#777}
svg{background:#fff;border:1px solid #ddd;margin:.3em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.legend span{display:inline-block;margin-right:1.2em;font-size:85%}
</style></head><body>
`)
	fmt.Fprintf(&b, "<h1>kubedefender replay</h1>\n<p>%d requests from %s to %s", r.Events, esc(stamp(r.From)), esc(stamp(r.To)))
	if r.Skipped > 0 {
		fmt.Fprintf(&b, "; %d lines skipped", r.Skipped)
	}
	b.WriteString(".</p>\n<table><tr><th>rule</th><th>kind</th><th>mode</th><th>matched</th><th>denied</th><th>first denied</th><th>breaker trips</th></tr>\n")
	for _, rr := range r.Rules {
		first := "-"
		if rr.FirstDenied != nil {
			first = stamp(rr.FirstDenied.At)
		}
		cls := ""
		if rr.Denied > 0 {
			cls = ` class="over"`
		}
		fmt.Fprintf(&b, "<tr><td><a href=\"#%s\">%s</a></td><td>%s</td><td>%s</td><td>%d</td><td%s>%d</td><td>%s</td><td>%d</td></tr>\n",
			esc(anchor(rr)), esc(rr.Name), rr.Kind, esc(rr.Mode), rr.Matched, cls, rr.Denied, esc(first), len(rr.BreakerTrips))
	}
	b.WriteString("</table>\n")
	for _, rr := range r.Rules {
		rs := r.states[ruleKeyOf(rr)]
		fmt.Fprintf(&b, "<h2 id=\"%s\">%s %s</h2>\n", esc(anchor(rr)), rr.Kind, esc(rr.Name))
		if rr.Denied > 0 {
			fd := rr.FirstDenied
			fmt.Fprintf(&b, "<p><span class=\"over\">%d would-be denials</span>, first at %s: %s %s by %s.<br>Keys: %s<br>Users: %s<br>User-Agents: %s</p>\n",
				rr.Denied, esc(stamp(fd.At)), esc(fd.Request.Verb), esc(fd.Request.Target()), esc(fd.Request.User),
				esc(counts(rr.TopKeys)), esc(counts(rr.TopUsers)), esc(counts(rr.TopUserAgent)))
		} else {
			fmt.Fprintf(&b, "<p>%d checks, nothing would have been denied.</p>\n", rr.Matched)
		}
		if rs == nil {
			continue
		}
		for j, pk := range rr.Peaks {
			cls := ""
			if pk.Used > pk.Limit {
				cls = ` class="over"`
			}
			fmt.Fprintf(&b, "<h3>window %s</h3>\n<p>peak <span%s>%d</span> of %d, key %s, at %s</p>\n", esc(pk.Window), cls, pk.Used, pk.Limit, esc(pk.Key), esc(stamp(pk.At)))
			writeChart(&b, r, rs, j)
		}
	}
	b.WriteString("<p class=\"muted\">Usage counts what each key asked of the window had nothing been denied; the dashed line is the limit. " +
		"Red ticks: would-be denials. Orange triangles: breaker trips.</p>\n</body></html>\n")
	if _, err := w.Write(b.Bytes()); err != nil {
		return fmt.Errorf("failed to write report: %w", err)
	}
	return nil
}

func ruleKeyOf(rr *RuleReport) string { return rr.Kind + "/" + rr.Name }

func anchor(rr *RuleReport) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, rr.Kind+"-"+rr.Name)
}

func esc(s string) string { return html.EscapeString(s) }

func writeChart(b *bytes.Buffer, r *Report, rs *ruleState, j int) {
	t0, t1 := r.From.UnixNano(), r.To.UnixNano()
	if t1 <= t0 {
		t1 = t0 + int64(time.Second)
	}
	limit := rs.limits[j]
	ymax := limit
	lines := rs.charts
	if len(lines) > chartLines {
		lines = lines[:chartLines]
	}
	for _, s := range lines {
		for _, p := range s.pts {
			ymax = max(ymax, p.used[j])
		}
	}
	ymax = ymax + ymax/10 + 1
	x := func(t int64) float64 {
		return padL + float64(t-t0)/float64(t1-t0)*float64(chartW-padL-padR)
	}
	y := func(v int64) float64 {
		return padT + float64(chartH-padT-padB)*(1-float64(v)/float64(ymax))
	}
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img">`+"\n", chartW, chartH, chartW, chartH)
	// Axes, with the limit and the time span labelled.
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999"/>`, padL, chartH-padB, chartW-padR, chartH-padB)
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999"/>`+"\n", padL, padT, padL, chartH-padB)
	fmt.Fprintf(b, `<text x="%d" y="%.1f" font-size="11" text-anchor="end">0</text>`, padL-4, y(0)+4)
	fmt.Fprintf(b, `<text x="%d" y="%.1f" font-size="11" text-anchor="end">%d</text>`+"\n", padL-4, y(ymax-ymax/11)+4, ymax-ymax/11)
	fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#c0392b" stroke-dasharray="6,4"/>`, padL, y(limit), chartW-padR, y(limit))
	fmt.Fprintf(b, `<text x="%d" y="%.1f" font-size="11" fill="#c0392b" text-anchor="end">limit %d</text>`+"\n", chartW-padR, y(limit)-3, limit)
	fmt.Fprintf(b, `<text x="%d" y="%d" font-size="11">%s</text>`, padL, chartH-8, esc(stamp(r.From)))
	fmt.Fprintf(b, `<text x="%d" y="%d" font-size="11" text-anchor="end">%s</text>`+"\n", chartW-padR, chartH-8, esc(stamp(r.To)))
	win := int64(rs.windows[j])
	for i, s := range lines {
		var pts strings.Builder
		for k, p := range s.pts {
			// A step line: usage holds until the next point, or until the
			// window has slid past the point without a new one (then the
			// window is empty: a point is the most the window held then).
			fmt.Fprintf(&pts, "%.1f,%.1f ", x(p.t), y(p.used[j]))
			next := t1
			if k+1 < len(s.pts) {
				next = s.pts[k+1].t
			}
			if end := p.t + win; end < next {
				fmt.Fprintf(&pts, "%.1f,%.1f %.1f,%.1f ", x(end), y(p.used[j]), x(end), y(0))
				fmt.Fprintf(&pts, "%.1f,%.1f ", x(next), y(0))
			} else {
				fmt.Fprintf(&pts, "%.1f,%.1f ", x(next), y(p.used[j]))
			}
		}
		fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"><title>%s</title></polyline>`+"\n",
			lineColors[i%len(lineColors)], strings.TrimSpace(pts.String()), esc(displayKey(s.key)))
	}
	for _, m := range rs.marks {
		mx := x(m.t)
		if m.trip {
			fmt.Fprintf(b, `<path d="M%.1f %d l-5 -9 h10 z" fill="#e67e22"><title>breaker trip, key %s</title></path>`+"\n", mx, padT+10, esc(displayKey(m.key)))
			continue
		}
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#c0392b" stroke-opacity="0.6"/>`+"\n", mx, padT, mx, padT+8)
	}
	b.WriteString("</svg>\n<div class=\"legend\">")
	for i, s := range lines {
		fmt.Fprintf(b, `<span style="color:%s">&#9632; %s</span>`, lineColors[i%len(lineColors)], esc(displayKey(s.key)))
	}
	if len(rs.marks) >= maxMarks {
		fmt.Fprintf(b, `<span class="muted">(first %d denials marked)</span>`, maxMarks)
	}
	b.WriteString("</div>\n")
}
