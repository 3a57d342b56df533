package replay

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteJSON writes the report as indented JSON (the documented shape).
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("failed to write report: %w", err)
	}
	return nil
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func counts(cs []Count) string {
	if len(cs) == 0 {
		return "-"
	}
	parts := make([]string, len(cs))
	for i, c := range cs {
		v := c.Value
		if v == "" {
			v = `""`
		}
		parts[i] = fmt.Sprintf("%s (%d)", v, c.Count)
	}
	return strings.Join(parts, ", ")
}

// WriteTable writes the report for people.
func (r *Report) WriteTable(w io.Writer) error {
	b := &strings.Builder{}
	fmt.Fprintf(b, "Replayed %d requests from %s to %s", r.Events, stamp(r.From), stamp(r.To))
	if r.Skipped > 0 {
		fmt.Fprintf(b, "; %d lines skipped", r.Skipped)
	}
	if r.Late > 0 {
		fmt.Fprintf(b, "; %d events too far out of order, not replayed", r.Late)
	}
	b.WriteString(".\n")
	dc := r.DeleteCollections
	if dc.WithBody+dc.WithoutBody > 0 {
		fmt.Fprintf(b, "deletecollection: %d counted by the items of their response (%d items), %d counted as one (the log has no response body; audit level RequestResponse records it).\n",
			dc.WithBody, dc.Items, dc.WithoutBody)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(b, "skipped %s\n", p)
	}
	tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nRULE\tKIND\tMODE\tMATCHED\tDENIED\tFIRST DENIED\tLAST DENIED\tBREAKER TRIPS")
	for _, rr := range r.Rules {
		first, last := "-", "-"
		if rr.FirstDenied != nil {
			first, last = stamp(rr.FirstDenied.At), stamp(rr.LastDenied.At)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%d\n", rr.Name, rr.Kind, rr.Mode, rr.Matched, rr.Denied, first, last, len(rr.BreakerTrips))
	}
	tw.Flush()
	for _, rr := range r.Rules {
		fmt.Fprintf(b, "\n%s %q:\n", rr.Kind, rr.Name)
		tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  WINDOW\tPEAK USED\tLIMIT\tBUSIEST KEY\tAT")
		for _, p := range rr.Peaks {
			over := ""
			if p.Used > p.Limit {
				over = " (over)"
			}
			fmt.Fprintf(tw, "  %s\t%d%s\t%d\t%s\t%s\n", p.Window, p.Used, over, p.Limit, p.Key, stamp(p.At))
		}
		tw.Flush()
		if rr.Denied > 0 {
			fd := rr.FirstDenied
			fmt.Fprintf(b, "  first denied: %s %s %s by %s (%s, %s)\n", stamp(fd.At), fd.Request.Verb, fd.Request.Target(),
				fd.Request.User, fd.Request.AuditID, fd.Request.Source)
			fmt.Fprintf(b, "  denied keys: %s\n  denied users: %s\n  denied user agents: %s\n", counts(rr.TopKeys), counts(rr.TopUsers), counts(rr.TopUserAgent))
		}
		for i, t := range rr.BreakerTrips {
			if i == 10 {
				fmt.Fprintf(b, "  ... %d more breaker trips\n", len(rr.BreakerTrips)-10)
				break
			}
			fmt.Fprintf(b, "  breaker %s -> Open at %s, key %s, by %s %s (%s)\n", t.From, stamp(t.At), t.Key, t.Request.Verb,
				t.Request.Target(), t.Request.User)
		}
	}
	if len(r.FlowSchemas) > 0 {
		b.WriteString("\n")
		tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FLOW SCHEMA\tPRIORITY LEVEL\tREQUESTS")
		for _, f := range r.FlowSchemas {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", f.Name, f.PriorityLevel, f.Matched)
		}
		tw.Flush()
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("failed to write report: %w", err)
	}
	return nil
}

// Target names what a request was about: resource namespace/name.
func (r RequestRef) Target() string {
	s := r.Resource
	switch {
	case r.Namespace != "" && r.Name != "":
		s += " " + r.Namespace + "/" + r.Name
	case r.Namespace != "":
		s += " in " + r.Namespace
	case r.Name != "":
		s += " " + r.Name
	}
	return s
}
