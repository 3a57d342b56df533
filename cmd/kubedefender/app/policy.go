package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubedefender/kubedefender/policy"
)

func newPolicyCommand(s Streams) *cobra.Command {
	return newGroupCommand("policy", "Validate policies and explain how they judge a request",
		newPolicyValidateCommand(s), newPolicyExplainCommand(s))
}

// validateOptions are the flags of policy validate.
type validateOptions struct {
	Output     string
	Strict     bool
	Kubeconfig string
	Context    string
}

func (o *validateOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVarP(&o.Output, "output", "o", "text", "output format: text or json (one object, see docs/policy.md)")
	f.BoolVar(&o.Strict, "strict", false, "warnings fail too (exit 1)")
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "check resources against this cluster's discovery (default: the built-in table of the standard API groups)")
	f.StringVar(&o.Context, "context", "", "kubeconfig context (with --kubeconfig)")
}

func (o *validateOptions) Validate() error {
	if o.Output != "text" && o.Output != "json" {
		return fmt.Errorf("--output must be text or json, not %q", o.Output)
	}
	return nil
}

// ValidateReport is what policy validate -o json prints: one object for the
// whole run. Valid is false when any file has an error (or, with --strict, a
// warning); the exit code says the same.
type ValidateReport struct {
	Valid bool         `json:"valid"`
	Files []FileReport `json:"files"`
}

// FileReport is one policy document: a file, stdin ("-") or one data key of a
// ConfigMap ("FILE:data.KEY").
type FileReport struct {
	File   string `json:"file"`
	Valid  bool   `json:"valid"`
	Policy string `json:"policy,omitempty"`
	Hash   string `json:"hash,omitempty"`
	// Errors and Warnings are never null.
	Errors   []Problem `json:"errors"`
	Warnings []Problem `json:"warnings"`
}

// Problem is one error or warning. Field is the field path (empty for a
// problem with the file as a whole); Message is the line printed after the
// file name.
type Problem struct {
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func newPolicyValidateCommand(s Streams) *cobra.Command {
	o := &validateOptions{}
	cmd := &cobra.Command{
		Use:   "validate FILE|DIR|-...",
		Short: "Check policy files; exit 1 and print every error with its field path when one is bad",
		Long: `validate checks policy files and prints every problem of each at once, each with its
field path, after the file's path as given. A directory validates every *.yaml and *.yml in it
(not recursively); "-" reads stdin; a ConfigMap manifest (as deploy/ ships it) is checked key by
key. Resources are checked against the standard API groups, or against a cluster's discovery
with --kubeconfig. Exit code: 0 when every file is valid (warnings are printed but do not fail,
unless --strict), 1 otherwise.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			var served policy.ResourceTable
			if o.Kubeconfig != "" {
				t, err := discoverResources(o.Kubeconfig, o.Context)
				if err != nil {
					return err
				}
				served = t
			}
			rep := validateAll(args, s.In, served, o.Strict)
			if o.Output == "json" {
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				printValidateReport(s, rep)
			}
			if !rep.Valid {
				bad := 0
				for _, f := range rep.Files {
					if !f.Valid {
						bad++
					}
				}
				return &ExitError{Code: 1, Err: fmt.Errorf("%d of %d policy files are invalid", bad, len(rep.Files))}
			}
			return nil
		},
	}
	o.AddFlags(cmd)
	return cmd
}

// validateAll validates every argument: a file, a directory of *.yaml and
// *.yml files, or "-" for stdin.
func validateAll(args []string, stdin io.Reader, served policy.ResourceTable, strict bool) *ValidateReport {
	rep := &ValidateReport{Valid: true, Files: []FileReport{}}
	add := func(f FileReport) {
		f.Valid = len(f.Errors) == 0 && (!strict || len(f.Warnings) == 0)
		rep.Valid = rep.Valid && f.Valid
		rep.Files = append(rep.Files, f)
	}
	fail := func(name string, err error) {
		add(FileReport{File: name, Errors: []Problem{{Message: err.Error()}}, Warnings: []Problem{}})
	}
	for _, arg := range args {
		if arg == "-" {
			data, err := io.ReadAll(io.LimitReader(stdin, policy.MaxFileBytes+1))
			if err != nil {
				fail(arg, fmt.Errorf("failed to read stdin: %w", err))
				continue
			}
			for _, f := range validateContent(arg, data, served) {
				add(f)
			}
			continue
		}
		files := []string{arg}
		if st, err := os.Stat(arg); err == nil && st.IsDir() {
			files = nil
			entries, err := os.ReadDir(arg)
			if err != nil {
				fail(arg, fmt.Errorf("failed to read directory: %w", err))
				continue
			}
			for _, e := range entries {
				if !e.IsDir() && (strings.HasSuffix(e.Name(), ".yaml") || strings.HasSuffix(e.Name(), ".yml")) {
					files = append(files, filepath.Join(arg, e.Name()))
				}
			}
			if len(files) == 0 {
				fail(arg, errors.New("the directory holds no *.yaml or *.yml file"))
				continue
			}
		}
		for _, name := range files {
			data, err := readPolicyFile(name)
			if err != nil {
				fail(name, err)
				continue
			}
			for _, f := range validateContent(name, data, served) {
				add(f)
			}
		}
	}
	return rep
}

func readPolicyFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("failed to open policy: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, policy.MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("failed to read policy %s: %w", name, err)
	}
	return data, nil
}

// validateContent validates the policies in one file's content.
func validateContent(name string, data []byte, served policy.ResourceTable) []FileReport {
	docs, err := policy.Documents(name, data)
	if err != nil {
		return []FileReport{{File: name, Errors: problems(err), Warnings: []Problem{}}}
	}
	var out []FileReport
	for _, d := range docs {
		f := FileReport{File: d.Name, Errors: []Problem{}, Warnings: []Problem{}}
		c, err := policy.Parse(d.Name, d.Data)
		if err != nil {
			f.Errors = problems(err)
			out = append(out, f)
			continue
		}
		f.Policy, f.Hash = c.Policy.Metadata.Name, c.Hash
		var errs, warns field.ErrorList
		if served != nil {
			errs, warns = policy.CheckResources(c.Policy, served)
		}
		warns = append(policy.Warnings(c.Policy), warns...)
		f.Errors = fieldProblems(errs)
		f.Warnings = fieldProblems(warns)
		out = append(out, f)
	}
	return out
}

// problems turns a policy error into one Problem per line.
func problems(err error) []Problem {
	var perr *policy.Error
	if !errors.As(err, &perr) {
		return []Problem{{Message: err.Error()}}
	}
	out := []Problem{}
	for _, fe := range perr.Errs {
		p := Problem{Field: fe.Field, Message: fe.Error()}
		if fe.Field == "<file>" {
			p = Problem{Message: fe.Detail}
		}
		out = append(out, p)
	}
	return out
}

func fieldProblems(errs field.ErrorList) []Problem {
	out := []Problem{}
	for _, fe := range errs {
		out = append(out, Problem{Field: fe.Field, Message: fe.Error()})
	}
	return out
}

// printValidateReport prints, per file, "FILE: valid (...)" on stdout or each
// error as "FILE: MESSAGE" on stderr, and each warning as "FILE: warning:
// MESSAGE" on stderr.
func printValidateReport(s Streams, rep *ValidateReport) {
	for _, f := range rep.Files {
		for _, e := range f.Errors {
			fmt.Fprintf(s.Err, "%s: %s\n", f.File, e.Message)
		}
		for _, w := range f.Warnings {
			fmt.Fprintf(s.Err, "%s: warning: %s\n", f.File, w.Message)
		}
		if len(f.Errors) == 0 {
			verdict := "valid"
			if !f.Valid {
				verdict = "invalid with --strict (warnings)"
			}
			fmt.Fprintf(s.Out, "%s: %s (policy %q, hash %s, %d warnings)\n", f.File, verdict, f.Policy, f.Hash, len(f.Warnings))
		}
	}
}

// discoverResources reads the resources a cluster serves (no subresources).
// Groups whose discovery fails (an aggregated API that is down) are left out.
func discoverResources(kubeconfig, kubecontext string) (policy.ResourceTable, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubecontext}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("failed to load kubeconfig: %w", err)
	}
	cfg.UserAgent = "kubedefender-policy-validate"
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("failed to build discovery client: %w", err)
	}
	_, lists, err := dc.ServerGroupsAndResources()
	if err != nil && !discovery.IsGroupDiscoveryFailedError(err) {
		return nil, fmt.Errorf("failed to discover the cluster's resources: %w", err)
	}
	return resourceTable(lists), nil
}

// resourceTable turns discovery lists into a table (subresources left out).
func resourceTable(lists []*metav1.APIResourceList) policy.ResourceTable {
	t := policy.ResourceTable{}
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			continue
		}
		if _, ok := t[gv.Group]; !ok {
			t[gv.Group] = nil
		}
		for _, r := range l.APIResources {
			if !strings.Contains(r.Name, "/") && !slices.Contains(t[gv.Group], r.Name) {
				t[gv.Group] = append(t[gv.Group], r.Name)
			}
		}
	}
	return t
}
