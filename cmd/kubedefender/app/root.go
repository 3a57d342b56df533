// Package app holds kubedefender's cobra commands. Each command's work lives in
// the package that owns the concern; the commands parse flags and wire.
package app

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
)

// PluginBinary is the name under which kubectl finds kubedefender as a plugin:
// `kubectl defender ...` runs the kubectl-defender on PATH.
const PluginBinary = "kubectl-defender"

// displayName is how usage and help name the command: "kubectl defender" when
// the binary was invoked as kubectl-defender (a copy or symlink on PATH, or a
// krew install), else "kubedefender".
func displayName(argv0 string) string {
	base := strings.TrimSuffix(filepath.Base(argv0), ".exe")
	if base == PluginBinary {
		return "kubectl defender"
	}
	return "kubedefender"
}

// Streams are a command's standard streams: results go to Out, errors to Err.
type Streams struct {
	In  io.Reader
	Out io.Writer
	Err io.Writer
}

// ExitError carries a specific exit code out of a command.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// NewRootCommand builds the kubedefender command tree.
func NewRootCommand(s Streams) *cobra.Command {
	return newRootCommand(s, "kubedefender")
}

// newRootCommand builds the command tree, naming it name in usage and help.
func newRootCommand(s Streams, name string) *cobra.Command {
	root := &cobra.Command{
		Use:   "kubedefender",
		Short: "Guard a Kubernetes API server: delete budgets, circuit breakers, rate limits and fair queues",
		Long: `kubedefender stands in front of kube-apiserver as a reverse proxy and a validating
admission webhook that share one policy and one state store. It stops mass deletes with
budgets over sliding windows and circuit breakers, limits clients per User-Agent, and
isolates traffic with APF-style priority levels. See docs/policy.md for the policy reference.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// As kubectl-defender, every usage line says "kubectl defender".
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: name},
	}
	root.SetIn(s.In)
	root.SetOut(s.Out)
	root.SetErr(s.Err)
	root.AddCommand(
		newServeCommand(s, nil),
		newPolicyCommand(s),
		newWebhookCommand(s),
		newCertsCommand(s),
		newBreakglassCommand(s),
		newStatusCommand(s),
		newReplayCommand(s),
		newVersionCommand(s),
	)
	if name != "kubedefender" {
		renameExamples(root, name)
	}
	return root
}

// newGroupCommand is a command that only holds subcommands (policy, webhook,
// certs): run without one, it prints its help.
func newGroupCommand(use, short string, subcommands ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short}
	cmd.AddCommand(subcommands...)
	return cmd
}

// exampleCommand is kubedefender where an example line starts with it.
var exampleCommand = regexp.MustCompile(`(?m)^(\s*)kubedefender `)

// renameExamples makes every command's example lines start with name, so
// that `kubectl defender breakglass grant --help` shows what to type.
func renameExamples(c *cobra.Command, name string) {
	c.Example = exampleCommand.ReplaceAllString(c.Example, "${1}"+name+" ")
	for _, sub := range c.Commands() {
		renameExamples(sub, name)
	}
}

// Main runs the command line and returns the process exit code.
func Main(args []string, in io.Reader, out, errOut io.Writer) int {
	root := newRootCommand(Streams{In: in, Out: out, Err: errOut}, displayName(os.Args[0]))
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(errOut, "Error:", err)
		var ee *ExitError
		if errors.As(err, &ee) {
			return ee.Code
		}
		return 1
	}
	return 0
}
