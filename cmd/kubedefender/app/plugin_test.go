package app

import (
	"bytes"
	"encoding/json"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/kubedefender/kubedefender/version"
)

// TestVersionOutput: `version` prints one line by default (-o text) and the
// build's fields with -o json; any other format is refused.
func TestVersionOutput(t *testing.T) {
	code, stdout, stderr := run(t, "version")
	if code != 0 || stdout != version.String()+"\n" {
		t.Fatalf("version: exit %d, stdout %q, stderr %q: want the one-line report", code, stdout, stderr)
	}
	code, stdout, _ = run(t, "version", "-o", "text")
	if code != 0 || stdout != version.String()+"\n" {
		t.Fatalf("version -o text: exit %d, stdout %q: want the one-line report", code, stdout)
	}

	code, stdout, stderr = run(t, "version", "-o", "json")
	if code != 0 {
		t.Fatalf("version -o json: exit %d, stderr %q", code, stderr)
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("version -o json printed %q: %v", stdout, err)
	}
	want := map[string]string{"version": version.Version, "commit": version.Commit, "date": version.Date,
		"goVersion": runtime.Version(), "platform": runtime.GOOS + "/" + runtime.GOARCH}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("version -o json = %v, want %v", got, want)
	}

	code, _, stderr = run(t, "version", "-o", "yaml")
	if code == 0 || !strings.Contains(stderr, "text or json") {
		t.Fatalf("version -o yaml: exit %d, stderr %q: want a refusal naming text and json", code, stderr)
	}
}

// TestDisplayNameFollowsTheBinaryName: installed as kubectl-defender (a copy,
// a symlink or krew), usage says `kubectl defender`; under any other name it
// says kubedefender.
func TestDisplayNameFollowsTheBinaryName(t *testing.T) {
	for _, tc := range []struct{ argv0, want string }{
		{"kubedefender", "kubedefender"},
		{"/usr/local/bin/kubedefender", "kubedefender"},
		{"./bin/kubectl-defender", "kubectl defender"},
		{"/home/me/.krew/bin/kubectl-defender", "kubectl defender"},
		{"kubectl-defender.exe", "kubectl defender"},
		{"kubectl-defender-old", "kubedefender"},
	} {
		if got := displayName(tc.argv0); got != tc.want {
			t.Errorf("displayName(%q) = %q, want %q", tc.argv0, got, tc.want)
		}
	}
}

// TestPluginUsageSaysKubectlDefender: every usage line of the tree built for
// the plugin starts with `kubectl defender`, so help shows what to type.
func TestPluginUsageSaysKubectlDefender(t *testing.T) {
	var out bytes.Buffer
	root := newRootCommand(Streams{In: strings.NewReader(""), Out: &out, Err: &out}, "kubectl defender")
	root.SetArgs([]string{"breakglass", "list", "--help"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "kubectl defender breakglass list [flags]") || strings.Contains(out.String(), "kubedefender breakglass") {
		t.Fatalf("breakglass list --help as a plugin:\n%s\nwant usage `kubectl defender breakglass list [flags]`", out.String())
	}
	grant, _, err := root.Find([]string{"breakglass", "grant"})
	if err != nil {
		t.Fatal(err)
	}
	if got := grant.UseLine(); !strings.HasPrefix(got, "kubectl defender breakglass grant ") {
		t.Fatalf("grant usage %q, want it to start with `kubectl defender breakglass grant`", got)
	}
	if !strings.HasPrefix(grant.Example, "  kubectl defender breakglass grant ") || strings.Contains(grant.Example, "kubedefender breakglass") {
		t.Fatalf("grant examples:\n%s\nwant them as `kubectl defender breakglass grant ...`", grant.Example)
	}
	webhook, _, err := root.Find([]string{"webhook", "config"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(webhook.Example, "  kubectl defender webhook config ") || !strings.Contains(webhook.Example, "--service kubedefender-system/kubedefender ") {
		t.Fatalf("webhook config examples:\n%s\nwant the command renamed and the Service name kept", webhook.Example)
	}
	if got := NewRootCommand(Streams{}).DisplayName(); got != "kubedefender" {
		t.Fatalf("NewRootCommand display name %q, want kubedefender", got)
	}
}

// TestBreakglassNamespaceFlags: kubectl's -n names the namespace the
// Overrides live in (--override-namespace), while grant's long --namespace
// keeps scoping the override to requests in a namespace. Both on one line
// reach their own fields.
func TestBreakglassNamespaceFlags(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		wantStore  string
		wantScopes []string
	}{
		{"no flags keep the default break-glass namespace", []string{"breakglass", "grant"}, "kubedefender-system", []string{}},
		{"-n sets where the Override is stored", []string{"breakglass", "grant", "-n", "ops"}, "ops", []string{}},
		{"-n and --namespace set the store and the scope apart", []string{"breakglass", "grant", "-n", "ops", "--namespace", "prod"}, "ops", []string{"prod"}},
		{"--override-namespace is -n's long name", []string{"breakglass", "list", "--override-namespace", "ops"}, "ops", nil},
		{"-n works on revoke", []string{"breakglass", "revoke", "-n", "ops"}, "ops", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := NewRootCommand(Streams{})
			cmd, rest, err := root.Find(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Fatal(err)
			}
			store, err := cmd.Flags().GetString("override-namespace")
			if err != nil || store != tc.wantStore {
				t.Fatalf("override namespace %q (%v), want %q", store, err, tc.wantStore)
			}
			if tc.wantScopes != nil {
				scopes, err := cmd.Flags().GetStringSlice("namespace")
				if err != nil || !reflect.DeepEqual(scopes, tc.wantScopes) {
					t.Fatalf("scope namespaces %q (%v), want %q", scopes, err, tc.wantScopes)
				}
			}
		})
	}
}

// TestGrantWarnsWhenMinusNLooksLikeAScope: a kubectl user who types
// `grant -n prod` likely meant the scope; the Override would be stored where
// no replica watches. grant says so before it reaches the cluster.
func TestGrantWarnsWhenMinusNLooksLikeAScope(t *testing.T) {
	t.Setenv("KUBECONFIG", "/nonexistent/kubeconfig") // never reach a real cluster
	_, _, stderr := run(t, "breakglass", "grant", "-n", "prod", "--budget", "pod-deletes", "--for", "10m", "--reason", "INC-1: drain")
	if !strings.Contains(stderr, "-n/--override-namespace prod is where the Override is stored") || !strings.Contains(stderr, "--namespace prod") {
		t.Fatalf("stderr %q: want a note that -n is the store and --namespace the scope", stderr)
	}
	_, _, stderr = run(t, "breakglass", "grant", "-n", "prod", "--namespace", "prod", "--budget", "pod-deletes", "--for", "10m", "--reason", "INC-1: drain")
	if strings.Contains(stderr, "note:") {
		t.Fatalf("stderr %q: no note when the scope is given", stderr)
	}
}
