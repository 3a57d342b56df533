package app

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func runWithStdin(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Main(args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// wildcardPolicy is valid but warns: it charges every create and update.
const wildcardPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: w}
spec:
  budgets:
  - name: everything
    match: {verbs: ["*"], resources: ["*"]}
    windows: [{window: 1m, limit: 20}]
`

func TestPolicyValidateInputs(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"a-good.yaml": goodPolicy,
		"b-bad.yml":   strings.Replace(goodPolicy, "limit: 20", `limit: "20"`, 1),
		"notes.txt":   "not a policy",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	six := filepath.Join("..", "..", "..", "policy", "testdata", "invalid", "91-six-mistakes-of-type-and-value.yaml")
	configMap := filepath.Join("..", "..", "..", "deploy", "base", "policy-configmap.yaml")
	cases := []struct {
		name       string
		stdin      string
		args       []string
		wantCode   int
		wantOut    []string
		wantErrOut []string
		wantLines  int // lines on stderr naming the file, when > 0
	}{
		{
			name: "a file with six mistakes of type and value prints all six, each after the path as given",
			args: []string{"policy", "validate", six}, wantCode: 1, wantLines: 6,
			wantErrOut: []string{six + ": spec.budgets[0].windows[0].window: Invalid value: 5", six + `: spec.budgets[0].windows[1].limit: Invalid value: "100"`,
				six + `: spec.budgets[0].windows[2].window: Invalid value: "1w": has no week unit: write "7d"`, six + `: spec.budgets[0].mode: Unsupported value: "enforce"`,
				six + `: spec.budgets[0].onStoreFailure: Unsupported value: "Fail"`, six + `: spec.breakGlass.namespace: Invalid value: "Kube_Defender"`},
		},
		{
			name: "a dash reads the policy from stdin", stdin: goodPolicy,
			args: []string{"policy", "validate", "-"}, wantCode: 0, wantOut: []string{`-: valid (policy "t"`},
		},
		{
			name: "a bad policy on stdin is named by the dash", stdin: "apiVersion: nope\n",
			args: []string{"policy", "validate", "-"}, wantCode: 1, wantErrOut: []string{`-: apiVersion: Unsupported value: "nope"`},
		},
		{
			name: "a directory validates every yaml and yml file in it and nothing else",
			args: []string{"policy", "validate", dir}, wantCode: 1,
			wantOut:    []string{filepath.Join(dir, "a-good.yaml") + ": valid"},
			wantErrOut: []string{filepath.Join(dir, "b-bad.yml") + `: spec.budgets[0].windows[0].limit: Invalid value: "20": must be a whole number, written without quotes`, "1 of 2 policy files are invalid"},
		},
		{
			name: "the shipped ConfigMap manifest is understood: its policy is in a data key",
			args: []string{"policy", "validate", configMap}, wantCode: 0,
			wantOut: []string{configMap + ":data.policy.yaml: valid (policy \"production\""},
		},
		{
			name: "a ConfigMap without a policy key is an error that lists its keys", stdin: "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {foo: bar}\n",
			args: []string{"policy", "validate", "-"}, wantCode: 1, wantErrOut: []string{"-: a ConfigMap with no policy in its data: put the policy under a key ending in .yaml (keys found: foo)"},
		},
		{
			name: "warnings are printed but do not fail", stdin: wildcardPolicy,
			args: []string{"policy", "validate", "-"}, wantCode: 0,
			wantOut:    []string{"-: valid", "1 warnings"},
			wantErrOut: []string{"-: warning: spec.budgets[0].match: Invalid value: \"verbs [*], resources [*]\": charges every create and update"},
		},
		{
			name: "warnings fail with --strict", stdin: wildcardPolicy,
			args: []string{"policy", "validate", "--strict", "-"}, wantCode: 1,
			wantOut: []string{"-: invalid with --strict (warnings)"}, wantErrOut: []string{"1 of 1 policy files are invalid"},
		},
		{
			name: "an unknown output format is refused",
			args: []string{"policy", "validate", "-o", "yaml", "-"}, wantCode: 1, wantErrOut: []string{`--output must be text or json, not "yaml"`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runWithStdin(t, tc.stdin, tc.args...)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, tc.wantCode, out, errOut)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.wantErrOut {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
			if tc.wantLines > 0 {
				if n := strings.Count(errOut, tc.args[len(tc.args)-1]+": "); n != tc.wantLines {
					t.Errorf("stderr has %d lines naming the file, want %d:\n%s", n, tc.wantLines, errOut)
				}
			}
		})
	}
}

func TestPolicyValidateJSONIsOneObjectForCI(t *testing.T) {
	code, out, _ := runWithStdin(t, strings.Replace(goodPolicy, "limit: 20", "limit: 0", 1), "policy", "validate", "-o", "json", "-")
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	var rep ValidateReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, out)
	}
	want := ValidateReport{Valid: false, Files: []FileReport{{
		File: "-", Valid: false, Warnings: []Problem{},
		Errors: []Problem{{Field: "spec.budgets[0].windows[0].limit", Message: "spec.budgets[0].windows[0].limit: Invalid value: 0: must be greater than 0"}},
	}}}
	got, _ := json.Marshal(rep)
	exp, _ := json.Marshal(want)
	if string(got) != string(exp) {
		t.Errorf("report = %s\nwant     %s", got, exp)
	}
	code, out, _ = runWithStdin(t, goodPolicy, "policy", "validate", "-o", "json", "-")
	if code != 0 || !strings.Contains(out, `"valid": true`) || !strings.Contains(out, `"errors": []`) || !strings.Contains(out, `"warnings": []`) {
		t.Errorf("valid policy: exit %d, report %s", code, out)
	}
}

func TestDiscoveryListsBecomeAResourceTableWithoutSubresources(t *testing.T) {
	lists := []*metav1.APIResourceList{
		{GroupVersion: "v1", APIResources: []metav1.APIResource{{Name: "pods"}, {Name: "pods/eviction"}}},
		{GroupVersion: "example.com/v1", APIResources: []metav1.APIResource{{Name: "widgets"}}},
		{GroupVersion: "example.com/v2", APIResources: []metav1.APIResource{{Name: "widgets"}, {Name: "gadgets"}}},
	}
	got := resourceTable(lists)
	if strings.Join(got[""], ",") != "pods" || strings.Join(got["example.com"], ",") != "widgets,gadgets" || len(got) != 2 {
		t.Errorf("table = %v", got)
	}
}
