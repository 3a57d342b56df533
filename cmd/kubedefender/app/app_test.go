package app

import (
	"bytes"
	"context"
	"flag"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/kubedefender/kubedefender/config"
	"github.com/kubedefender/kubedefender/internal/errtest"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

var update = flag.Bool("update", false, "rewrite generated doc sections (docs/cli.md's serve flags)")

// run runs the kubedefender command line with args and an empty stdin.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runWithStdin(t, "", args...)
}

const goodPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: t}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: 20}]
    breaker: {recovery: Manual}
`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPolicyValidate(t *testing.T) {
	good := writeFile(t, "good.yaml", goodPolicy)
	bad := writeFile(t, "bad.yaml", strings.Replace(goodPolicy, "limit: 20", "limit: 0", 1)+"  bogus: 1\n")
	cases := []struct {
		name       string
		args       []string
		wantCode   int
		wantOut    string
		wantErrOut []string
	}{
		{"a valid policy exits 0 and says so on stdout", []string{"policy", "validate", good}, 0, "good.yaml: valid", nil},
		{"an invalid policy exits 1 with every error on stderr", []string{"policy", "validate", good, bad}, 1, "good.yaml: valid",
			[]string{"bad.yaml: spec.bogus: Forbidden: unknown field", "1 of 2 policy files are invalid"}},
		{"a missing file is an error", []string{"policy", "validate", "/nonexistent.yaml"}, 1, "", []string{"failed to open policy"}},
		{"no file is a usage error", []string{"policy", "validate"}, 1, "", []string{"requires at least 1 arg"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, tc.args...)
			if code != tc.wantCode || !strings.Contains(out, tc.wantOut) {
				t.Fatalf("exit %d, stdout %q; want exit %d and stdout containing %q (stderr %q)", code, out, tc.wantCode, tc.wantOut, errOut)
			}
			for _, w := range tc.wantErrOut {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
}

func TestPolicyExplain(t *testing.T) {
	p := writeFile(t, "p.yaml", goodPolicy)
	code, out, errOut := run(t, "policy", "explain", "--policy", p, "--verb", "delete", "--resource", "pods", "--namespace", "prod")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"✓ pod-deletes", "key namespace=prod", "decision on an empty store: allowed", "queuing disabled"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = run(t, "policy", "explain", "--policy", p, "--verb", "get", "--resource", "apps/deployments", "-o", "json")
	if code != 0 || !strings.Contains(out, `"why": "no match"`) {
		t.Fatalf("json explain: exit %d\n%s", code, out)
	}
	code, _, errOut = run(t, "policy", "explain", "--verb", "get")
	if code != 1 || !strings.Contains(errOut, "--policy is required") || !strings.Contains(errOut, "--resource is required") {
		t.Fatalf("missing flags: exit %d, stderr %q; want every missing flag named", code, errOut)
	}
}

func TestServeFlagsReachTheRunFunction(t *testing.T) {
	p := writeFile(t, "p.yaml", goodPolicy)
	cert := writeFile(t, "tls.crt", "x")
	key := writeFile(t, "tls.key", "x")
	var got *config.Config
	cmd := newServeCommand(Streams{Out: &bytes.Buffer{}, Err: &bytes.Buffer{}}, func(_ context.Context, c *config.Config) error {
		got = c
		return nil
	})
	cmd.SetArgs([]string{"--policy", p, "--webhook-listen", "127.0.0.1:8443", "--tls-cert-file", cert, "--tls-private-key-file", key, "--redis-timeout", "50ms", "--log-format", "text"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if got == nil || got.Options.WebhookListen != "127.0.0.1:8443" || got.Options.RedisTimeout.Milliseconds() != 50 || got.Options.AuthMode != config.AuthFrontProxy {
		t.Fatalf("config: %+v", got)
	}
}

func TestServeReportsEveryBadFlagAtOnce(t *testing.T) {
	cmd := newServeCommand(Streams{Out: &bytes.Buffer{}, Err: &bytes.Buffer{}}, func(context.Context, *config.Config) error {
		t.Fatal("run called with bad flags")
		return nil
	})
	cmd.SetArgs([]string{"--proxy-listen", "nope", "--auth-mode", "magic", "--budgets-at", "moon", "--redis-url", "http://x"})
	errtest.Want(t, cmd.Execute(), "--policy is required", `--proxy-listen "nope"`, "--upstream is required", `--auth-mode "magic"`, `--budgets-at "moon"`, "--redis-url", "--tls-cert-file and --tls-private-key-file are required")
}

// TestDocsServeFlags keeps docs/cli.md's flag reference equal to `serve -h`.
// Run with -update to rewrite it.
func TestDocsServeFlags(t *testing.T) {
	code, out, _ := run(t, "serve", "--help")
	if code != 0 {
		t.Fatalf("serve --help exited %d", code)
	}
	i := strings.Index(out, "Flags:\n")
	if i < 0 {
		t.Fatalf("no Flags section in:\n%s", out)
	}
	block := "```\n" + strings.TrimRight(out[i+len("Flags:\n"):], "\n") + "\n```\n"
	doc := filepath.Join("..", "..", "..", "docs", "cli.md")
	data, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- BEGIN serve flags", "<!-- END serve flags -->"
	s := string(data)
	b, e := strings.Index(s, begin), strings.Index(s, end)
	if b < 0 || e < b {
		t.Fatalf("docs/cli.md lacks the %q … %q markers", begin, end)
	}
	b += strings.Index(s[b:], "\n") + 1
	if s[b:e] == block {
		return
	}
	if !*update {
		t.Fatalf("docs/cli.md's serve flags are stale; run: go test ./cmd/kubedefender/app -run TestDocsServeFlags -update")
	}
	if err := os.WriteFile(doc, []byte(s[:b]+block+s[e:]), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDocsExplainSample: the policy explain sample in docs/cli.md is what
// the command prints for examples/production.yaml; "..." stands for lines
// left out, every other line is printed, in that order.
func TestDocsExplainSample(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "cli.md"))
	if err != nil {
		t.Fatal(err)
	}
	const prompt = "$ kubedefender policy explain "
	s := string(data)
	i := strings.Index(s, prompt)
	if i < 0 {
		t.Fatal("docs/cli.md has no policy explain sample")
	}
	sample, _, ok := strings.Cut(s[i:], "```")
	if !ok {
		t.Fatal("docs/cli.md's policy explain sample has no end")
	}
	lines := strings.Split(strings.TrimRight(sample, "\n"), "\n")
	args := strings.Fields(strings.TrimPrefix(lines[0], "$ kubedefender "))
	for j, a := range args {
		if a == "examples/production.yaml" {
			args[j] = filepath.Join("..", "..", "..", a)
		}
	}
	code, out, errOut := run(t, args...)
	if code != 0 {
		t.Fatalf("%s exited %d: %s", lines[0], code, errOut)
	}
	printed := strings.Split(out, "\n")
	k := 0
	for _, want := range lines[1:] {
		if want == "..." {
			continue
		}
		for k < len(printed) && printed[k] != want {
			k++
		}
		if k == len(printed) {
			t.Fatalf("docs/cli.md's explain sample shows %q, which %s does not print (in that order):\n%s", want, lines[0], out)
		}
		k++
	}
}

// TestDocsLinksResolve checks every relative link of the README and docs/:
// the file exists and, with a #fragment, so does a heading of that anchor.
func TestDocsLinksResolve(t *testing.T) {
	root := filepath.Join("..", "..", "..")
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(pages) < 5 {
		t.Fatalf("docs/*.md: %v, %d pages", err, len(pages))
	}
	pages = append(pages, filepath.Join(root, "README.md"))
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, page := range pages {
		data, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(data), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path, fragment, _ := strings.Cut(target, "#")
			file := page
			if path != "" {
				file = filepath.Join(filepath.Dir(page), path)
			}
			if _, err := os.Stat(file); err != nil {
				t.Errorf("%s links to %s, which does not exist", page, target)
				continue
			}
			if fragment != "" && !slices.Contains(markdownAnchors(t, file), fragment) {
				t.Errorf("%s links to %s, but %s has no heading with that anchor", page, target, file)
			}
		}
	}
}

// markdownAnchors lists the anchors GitHub gives the headings of a Markdown
// file (outside code blocks): lowercase, punctuation dropped, spaces to dashes.
func markdownAnchors(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var anchors []string
	fence := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "```") {
			fence = !fence
		}
		heading := strings.TrimLeft(line, "#")
		if fence || heading == line || !strings.HasPrefix(heading, " ") {
			continue
		}
		var b strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				b.WriteRune(r)
			}
		}
		anchors = append(anchors, b.String())
	}
	return anchors
}

func TestStatusReadsEveryReplica(t *testing.T) {
	c, err := policy.Parse("p.yaml", []byte(goodPolicy))
	if err != nil {
		t.Fatal(err)
	}
	eng, err := limiter.NewEngine(limiter.EngineConfig{Policy: c})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 21; i++ {
		eng.Decide(context.Background(), &limiter.Attributes{Attributes: policy.Attributes{Verb: "delete", Resource: "pods", Namespace: "prod", Name: "p"}})
	}
	srv := httptest.NewServer(statusHandler(func(ctx context.Context) *replicaStatus {
		return &replicaStatus{Replica: "r1", Version: "v1", Store: "memory", Engine: eng.Status(ctx, statusKeys),
			PriorityLevels: []levelStatus{{Name: "catch-all", SeatsInUse: 3, SeatsLimit: 10, Queued: 2}}}
	}))
	defer srv.Close()
	code, out, errOut := run(t, "status", "--server", srv.URL)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"replica r1", "pod-deletes", "namespace=prod", "Open since", "1m 20/20", "catch-all", "3/10"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	code, _, errOut = run(t, "status", "--server", srv.URL, "--server", "http://127.0.0.1:1")
	if code != 1 || !strings.Contains(errOut, "failed to reach http://127.0.0.1:1") {
		t.Fatalf("an unreachable replica: exit %d, stderr %q", code, errOut)
	}
}
