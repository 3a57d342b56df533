package app

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/replay"
)

// replayOptions are the flags of `kubedefender replay`.
type replayOptions struct {
	PolicyFile string
	AuditLogs  []string
	Output     string
	Suggest    bool
	Headroom   float64
}

func (o *replayOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.PolicyFile, "policy", "", "the DefenderPolicy file to try")
	fs.StringSliceVar(&o.AuditLogs, "audit-log", nil, "audit log files (JSON lines as --audit-log-path writes them, rotated .gz files, webhook-backend EventList batches; - is stdin); repeat or separate with commas")
	fs.StringVarP(&o.Output, "output", "o", "table", "table, json or html (a self-contained page with charts)")
	fs.BoolVar(&o.Suggest, "suggest", false, "print a DefenderPolicy with limits from the log's peaks instead of the report")
	fs.Float64Var(&o.Headroom, "headroom", 2, "with --suggest: the factor between the peak seen and the suggested limit (at least 1)")
}

// Validate reports every problem with the flags at once; it has no side effects.
func (o *replayOptions) Validate(headroomSet bool) error {
	var errs []error
	if o.PolicyFile == "" {
		errs = append(errs, errors.New("--policy is required"))
	}
	if len(o.AuditLogs) == 0 {
		errs = append(errs, errors.New("--audit-log is required"))
	}
	switch o.Output {
	case "table", "json", "html":
	default:
		errs = append(errs, fmt.Errorf("--output must be table, json or html, not %q", o.Output))
	}
	if !(o.Headroom >= 1) {
		errs = append(errs, fmt.Errorf("--headroom must be at least 1, not %v", o.Headroom))
	}
	if headroomSet && !o.Suggest {
		errs = append(errs, errors.New("--headroom needs --suggest"))
	}
	return errors.Join(errs...)
}

func newReplayCommand(s Streams) *cobra.Command {
	o := &replayOptions{}
	cmd := &cobra.Command{
		Use:   "replay --policy FILE --audit-log FILE... [-o table|json|html] [--suggest [--headroom 2]]",
		Short: "Try a policy against the cluster's own past: replay kube-apiserver audit logs and report what it would have denied",
		Long: `replay judges every request of kube-apiserver audit logs with the same engine the webhook
and the proxy run, on an in-memory store whose clock is each request's time: budgets as the
webhook would charge them, rate limits as the proxy would. It reports, per rule, the requests
matched, the would-be denials (when, which keys, users and User-Agents), breaker trips and the
peak usage of every window. --suggest prints the policy with each limit set to the peak seen
times --headroom, rounded up to 1, 2 or 5 x 10^n: replayed against the same log it denies
nothing. Skipped lines are reported on stderr with file:line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(cmd.Flags().Changed("headroom")); err != nil {
				return err
			}
			return runReplay(cmd, s, o)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func runReplay(cmd *cobra.Command, s Streams, o *replayOptions) error {
	data, err := os.ReadFile(o.PolicyFile)
	if err != nil {
		return fmt.Errorf("failed to read policy: %w", err)
	}
	compiled, err := policy.Parse(o.PolicyFile, data)
	if err != nil {
		return err
	}
	rep, err := replay.Run(cmd.Context(), replay.Config{
		Policy: compiled, Files: o.AuditLogs, Stdin: s.In,
		OnProblem: func(p replay.Problem) { fmt.Fprintf(s.Err, "skipped %s\n", p) },
	})
	if err != nil {
		return err
	}
	if rep.Skipped > 0 {
		fmt.Fprintf(s.Err, "%d lines skipped\n", rep.Skipped)
	}
	if o.Suggest {
		in, err := policy.Decode(o.PolicyFile, data)
		if err != nil {
			return err
		}
		p, err := rep.Suggest(in, o.Headroom)
		if err != nil {
			return err
		}
		return rep.WriteSuggestion(s.Out, p, o.Headroom)
	}
	switch o.Output {
	case "json":
		return rep.WriteJSON(s.Out)
	case "html":
		return rep.WriteHTML(s.Out)
	}
	return rep.WriteTable(s.Out)
}
