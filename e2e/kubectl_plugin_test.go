package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/kubedefender/kubedefender/e2e/framework"
)

// TestKubectlPlugin installs the kubedefender binary as kubectl-defender on
// PATH and drives it through a real kubectl's plugin mechanism: `kubectl
// defender version -o json`, and break-glass grant, list and revoke against a
// real API server, reached with --kubeconfig and with KUBECONFIG, the
// Override's namespace given with kubectl's -n.
func TestKubectlPlugin(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("failed to find kubectl on PATH: %v", err)
	}
	// Given the binary copied onto PATH as kubectl-defender
	pluginDir := t.TempDir()
	plugin := filepath.Join(pluginDir, "kubectl-defender")
	raw, err := os.ReadFile(buildKubedefender(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plugin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	// plugin runs `kubectl args...` with pluginDir first on PATH and the extra
	// environment env; it fails t unless kubectl exits 0.
	kubectlPlugin := func(t *testing.T, env []string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), framework.KubectlTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, kubectl, args...)
		cmd.Env = append(os.Environ(), "PATH="+pluginDir+string(os.PathListSeparator)+os.Getenv("PATH"), "KUBECONFIG=")
		cmd.Env = append(cmd.Env, env...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("kubectl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out.String(), errOut.String())
		}
		return out.String()
	}

	// When kubectl lists its plugins, it finds kubectl-defender
	if out := kubectlPlugin(t, nil, "plugin", "list", "--name-only"); !strings.Contains(out, "kubectl-defender") {
		t.Fatalf("kubectl plugin list:\n%s\nwant kubectl-defender", out)
	}
	// And `kubectl defender version -o json` prints the build's fields
	var v map[string]string
	if out := kubectlPlugin(t, nil, "defender", "version", "-o", "json"); json.Unmarshal([]byte(out), &v) != nil ||
		v["version"] == "" || v["platform"] != runtime.GOOS+"/"+runtime.GOARCH || v["goVersion"] != runtime.Version() {
		t.Fatalf("kubectl defender version -o json:\n%s", out)
	}
	// And help names the command as typed
	if out := kubectlPlugin(t, nil, "defender", "breakglass", "--help"); !strings.Contains(out, "kubectl defender breakglass [command]") {
		t.Fatalf("kubectl defender breakglass --help:\n%s\nwant usage `kubectl defender breakglass [command]`", out)
	}

	// Given a control plane serving the Override CRD
	cp := framework.Start(t, framework.Options{})
	applyBase(t, cp, "namespace.yaml", "crd-override.yaml", "rbac-breakglass.yaml")
	waitOverridesServed(t, cp)

	// When an engineer grants an override through kubectl, -n naming where it
	// lives and --namespace its scope
	out := kubectlPlugin(t, nil, "defender", "breakglass", "grant", "-n", "kubedefender-system", "--namespace", "plugin-ns",
		"--budget", "pod-deletes", "--for", "10m", "--reason", "INC-13: kubectl plugin", "--kubeconfig", cp.AdminKubeconfig)
	name := overrideNameFrom(t, out)
	if !strings.Contains(out, "revoke early with: kubectl defender breakglass revoke "+name) {
		t.Errorf("grant output names the plugin's revoke command:\n%s", out)
	}

	// Then `kubectl defender breakglass list --kubeconfig` shows it active, scoped to plugin-ns
	var rows []struct{ Name, Namespace, State, Scope, Reason string }
	out = kubectlPlugin(t, nil, "defender", "breakglass", "list", "-o", "json", "--kubeconfig", cp.AdminKubeconfig)
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("breakglass list -o json printed %q: %v", out, err)
	}
	if len(rows) != 1 || rows[0].Name != name || rows[0].Namespace != "kubedefender-system" || rows[0].State != "Active" ||
		rows[0].Scope != "namespaces plugin-ns" || rows[0].Reason != "INC-13: kubectl plugin" {
		t.Fatalf("breakglass list -o json = %+v, want the one active override %s scoped to plugin-ns", rows, name)
	}
	// And the plugin reads KUBECONFIG from kubectl's environment too
	if out := kubectlPlugin(t, []string{"KUBECONFIG=" + cp.AdminKubeconfig}, "defender", "breakglass", "list"); !strings.Contains(out, name) {
		t.Fatalf("breakglass list with KUBECONFIG:\n%s\nwant %s", out, name)
	}

	// When it is revoked through kubectl, the list is empty
	kubectlPlugin(t, nil, "defender", "breakglass", "revoke", name, "-n", "kubedefender-system", "--kubeconfig", cp.AdminKubeconfig)
	out = kubectlPlugin(t, nil, "defender", "breakglass", "list", "-o", "json", "--kubeconfig", cp.AdminKubeconfig)
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 0 {
		t.Fatalf("breakglass list -o json after revoke = %q (%v), want []", out, err)
	}
}
