package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kubedefender/kubedefender/limiter"
)

// replicaStatus is what a serving replica answers on /status, and what
// `kubedefender status` reads.
type replicaStatus struct {
	Replica         string          `json:"replica"`
	Version         string          `json:"version"`
	Store           string          `json:"store"`
	LastReloadError string          `json:"lastReloadError,omitempty"`
	Engine          *limiter.Status `json:"engine"`
	PriorityLevels  []levelStatus   `json:"priorityLevels,omitempty"`
}

// levelStatus is one priority level of the proxy.
type levelStatus struct {
	Name       string `json:"name"`
	Exempt     bool   `json:"exempt"`
	SeatsInUse int    `json:"seatsInUse"`
	SeatsLimit int    `json:"seatsLimit"`
	Queued     int    `json:"queued"`
}

// statusKeys is how many keys per rule /status reports.
const statusKeys = 20

func statusHandler(get func(ctx context.Context) *replicaStatus) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(get(ctx))
	})
}

func newStatusCommand(s Streams) *cobra.Command {
	var servers []string
	var output string
	cmd := &cobra.Command{
		Use:   "status [--server URL]...",
		Short: "Show budgets (windows used/limit, when they free up), breakers, rate limits, overrides and priority levels of running replicas",
		Long: `status reads the read-only /status endpoint of each replica (its --metrics-listen address)
and shows, per budget and key, each window's used/limit and when it frees up, the breaker
state and since when; the hottest keys of each rate limit; the active overrides; the seats
and queues of each priority level; and each replica's policy hash and store.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output must be table or json, not %q", output)
			}
			var all []*replicaStatus
			var errs []error
			client := &http.Client{Timeout: 5 * time.Second}
			for _, srv := range servers {
				st, err := fetchStatus(cmd.Context(), client, srv)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				all = append(all, st)
			}
			if output == "json" {
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(all); err != nil {
					return err
				}
			} else {
				for i, st := range all {
					if i > 0 {
						fmt.Fprintln(s.Out)
					}
					printStatus(s.Out, st, time.Now())
				}
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().StringSliceVar(&servers, "server", []string{"http://127.0.0.1:9090"}, "a replica's metrics address (repeatable, or comma-separated)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func fetchStatus(ctx context.Context, c *http.Client, server string) (*replicaStatus, error) {
	u := strings.TrimRight(server, "/") + "/status"
	if !strings.Contains(u, "://") {
		u = "http://" + u
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("failed to ask %s: %w", server, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("failed to reach %s: %w", server, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("failed to read status from %s: %s: %s", server, resp.Status, strings.TrimSpace(string(body)))
	}
	st := &replicaStatus{}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(st); err != nil {
		return nil, fmt.Errorf("failed to decode status from %s: %w", server, err)
	}
	if st.Engine == nil {
		return nil, fmt.Errorf("failed to read status from %s: no engine section (is it a kubedefender metrics address?)", server)
	}
	return st, nil
}

func ago(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		return "in " + (-d).Round(time.Second).String()
	}
	return d.Round(time.Second).String() + " ago"
}

func printStatus(w io.Writer, st *replicaStatus, now time.Time) {
	e := st.Engine
	fmt.Fprintf(w, "replica %s  version %s  policy %s (hash %s)  store %s\n", st.Replica, st.Version, e.Policy, e.PolicyHash, st.Store)
	if st.LastReloadError != "" {
		fmt.Fprintf(w, "  last policy reload FAILED (the previous policy is running): %s\n", st.LastReloadError)
	}
	for _, msg := range e.Errors {
		fmt.Fprintf(w, "  error: %s\n", msg)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BUDGET\tMODE\tKEY\tBREAKER\tWINDOWS (used/limit)\tFREES UP")
	for _, b := range e.Budgets {
		if len(b.Keys) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\t%s\t(no requests counted)\t\n", b.Name, b.Mode, breakerKind(b.Breaker))
			continue
		}
		for _, k := range b.Keys {
			state := k.Breaker
			if k.BreakerSince != nil {
				state += " since " + ago(now, *k.BreakerSince)
			}
			var wins, frees []string
			for _, win := range k.Windows {
				wins = append(wins, fmt.Sprintf("%s %d/%d", win.Window, win.Used, win.Limit))
				if win.FreesAt != nil {
					frees = append(frees, win.Window+" "+ago(now, *win.FreesAt))
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", b.Name, b.Mode, k.Key, state, strings.Join(wins, "  "), strings.Join(frees, ", "))
		}
	}
	_ = tw.Flush()
	if len(e.RateLimits) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RATE LIMIT\tMODE\tQPS/BURST\tHOTTEST KEY\tTOKENS LEFT")
		for _, r := range e.RateLimits {
			if len(r.Hottest) == 0 {
				fmt.Fprintf(tw, "%s\t%s\t%g/%d\t-\t\n", r.Name, r.Mode, r.QPS, r.Burst)
			}
			for _, k := range r.Hottest {
				fmt.Fprintf(tw, "%s\t%s\t%g/%d\t%s\t%.1f\n", r.Name, r.Mode, r.QPS, r.Burst, k.Key, k.Tokens)
			}
		}
		_ = tw.Flush()
	}
	if len(e.Overrides) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "OVERRIDE\tSTATE\tEXPIRES\tBUDGETS\tRATE LIMITS\tREQUESTED BY\tREASON")
		for _, o := range e.Overrides {
			state := "Expired"
			if o.Active {
				state = "Active"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", o.Name, state, ago(now, o.ExpiresAt), strings.Join(o.Budgets, ","),
				strings.Join(o.RateLimits, ","), o.RequestedBy, oneLine(o.Reason))
		}
		_ = tw.Flush()
	} else {
		fmt.Fprintln(w, "no active overrides")
	}
	if len(st.PriorityLevels) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PRIORITY LEVEL\tSEATS IN USE\tQUEUED")
		for _, l := range st.PriorityLevels {
			seats := fmt.Sprintf("%d/%d", l.SeatsInUse, l.SeatsLimit)
			if l.Exempt {
				seats = fmt.Sprintf("%d (exempt)", l.SeatsInUse)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\n", l.Name, seats, l.Queued)
		}
		_ = tw.Flush()
	}
}

func breakerKind(k string) string {
	if k == "none" {
		return "no breaker"
	}
	return k + " (Closed)"
}
