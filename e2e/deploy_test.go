package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/webhook"
)

// repoRoot is the repository's top directory (tests run in e2e/).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// applyBase applies files of deploy/base (server-side, as the admin) to cp.
func applyBase(t *testing.T, cp *framework.ControlPlane, files ...string) {
	t.Helper()
	root := repoRoot(t)
	for _, f := range files {
		if out, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, "apply", "--server-side", "-f", filepath.Join(root, "deploy", "base", f)); err != nil {
			t.Fatalf("apply %s: %v\n%s%s", f, err, out, errOut)
		}
	}
}

// waitOverridesServed waits until cp serves the Override CRD in the
// kubedefender-system namespace.
func waitOverridesServed(t *testing.T, cp *framework.ControlPlane) {
	t.Helper()
	framework.Eventually(t, 30*time.Second, "the Override CRD to be served", func(context.Context) (bool, error) {
		_, _, err := cp.Kubectl(t, cp.AdminKubeconfig, "get", "overrides.kubedefender.io", "-n", "kubedefender-system")
		return err == nil, nil
	})
}

// TestDeployManifests applies every manifest under deploy/ to a real API
// server with a server-side dry run, so schema errors, unknown fields and
// wrong API versions fail here rather than in a cluster.
func TestDeployManifests(t *testing.T) {
	root := repoRoot(t)
	// Given a real API server
	cp := framework.Start(t, framework.Options{})
	// And the namespace and the CRDs, which namespaced objects, Overrides and
	// cert-manager's objects need to exist even in a dry run (cert-manager's
	// are open-schema stand-ins, e2e/testdata/cert-manager-crds.yaml)
	for _, f := range []string{"deploy/base/namespace.yaml", "deploy/base/crd-override.yaml", "e2e/testdata/cert-manager-crds.yaml"} {
		if out, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, "apply", "--server-side", "-f", filepath.Join(root, f)); err != nil {
			t.Fatalf("apply %s: %v\n%s%s", f, err, out, errOut)
		}
	}
	for _, crd := range []string{"overrides.kubedefender.io", "issuers.cert-manager.io", "certificates.cert-manager.io"} {
		framework.Eventually(t, framework.KubectlTimeout, "the CRD "+crd+" is established", func(context.Context) (bool, error) {
			out, _, err := cp.Kubectl(t, cp.AdminKubeconfig, "get", "crd", crd, "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}")
			return err == nil && out == "True", nil
		})
	}

	cases := []struct {
		name string
		args []string
	}{
		{"the base kustomization applies", []string{"-k", filepath.Join(root, "deploy", "base")}},
		{"the Redis variant applies", []string{"-k", filepath.Join(root, "deploy", "redis")}},
		{"the production example (Redis, cert-manager, NetworkPolicies) applies", []string{"-k", filepath.Join(root, "deploy", "production")}},
		{"base with the cert-manager, NetworkPolicy and webhook client auth components applies", []string{"-k", componentsOverlay(t, root, "deploy/base", "deploy/cert-manager", "deploy/networkpolicy", "deploy/webhook-client-auth")}},
		{"the break-glass ClusterRole applies on its own", []string{"-f", filepath.Join(root, "deploy", "base", "rbac-breakglass.yaml")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// When every object is applied with a server-side dry run
			args := append([]string{"apply", "--dry-run=server", "--server-side", "--field-manager=e2e"}, tc.args...)
			out, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, args...)
			// Then the API server accepts each of them
			if err != nil {
				t.Fatalf("kubectl %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
			}
			if !strings.Contains(out, "(server dry run)") {
				t.Fatalf("kubectl did not dry-run on the server:\n%s", out)
			}
		})
	}

	t.Run("an Override without a reason is refused by the CRD schema", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.yaml")
		writeTestFile(t, bad, `apiVersion: kubedefender.io/v1alpha1
kind: Override
metadata: {name: no-reason, namespace: kubedefender-system}
spec:
  budgets: [pod-deletes]
  expiresAt: "2030-01-01T00:00:00Z"
  requestedBy: alice
`)
		_, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, "apply", "--dry-run=server", "-f", bad)
		if err == nil || !strings.Contains(errOut, "spec.reason: Required value") {
			t.Fatalf("want the schema to require spec.reason; err %v, stderr:\n%s", err, errOut)
		}
	})
}

// TestDeployPolicyValidates checks that the policy shipped in the ConfigMap is
// a valid policy, and that the alert rules only use metrics that exist.
func TestDeployPolicyValidates(t *testing.T) {
	root := repoRoot(t)
	data, err := os.ReadFile(filepath.Join(root, "deploy", "base", "policy-configmap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(data, &cm); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse("policy-configmap.yaml:data.policy.yaml", []byte(cm.Data["policy.yaml"]))
	if err != nil {
		t.Fatalf("the shipped policy is invalid:\n%v", err)
	}

	// The shipped webhook configuration is what `webhook config` makes of that policy.
	want, _, err := webhook.BuildConfiguration(pol, webhook.ConfigurationOptions{
		Service: &admissionregistrationv1.ServiceReference{Namespace: "kubedefender-system", Name: "kubedefender", Path: ptr.To("/validate"), Port: ptr.To[int32](443)},
	})
	if err != nil {
		t.Fatal(err)
	}
	shipped, err := os.ReadFile(filepath.Join(root, "deploy", "base", "webhook-configuration.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var got admissionregistrationv1.ValidatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(shipped, &got); err != nil {
		t.Fatal(err)
	}
	delete(got.Annotations, "cert-manager.io/inject-ca-from")
	wantJSON, _ := json.Marshal(want)
	gotJSON, _ := json.Marshal(&got)
	if string(wantJSON) != string(gotJSON) {
		t.Errorf("deploy/base/webhook-configuration.yaml is stale; regenerate it with kubedefender webhook config (see its header)\nwant %s\ngot  %s", wantJSON, gotJSON)
	}

	alerts, err := os.ReadFile(filepath.Join(root, "deploy", "monitoring", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	metricsDoc, err := os.ReadFile(filepath.Join(root, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`kubedefender_[a-z_]+`).FindAllString(string(alerts), -1) {
		if !strings.Contains(string(metricsDoc), "`"+m+"`") {
			t.Errorf("alerts.yaml uses %s, which docs/metrics.md's table does not document", m)
		}
	}
}

// TestDockerfile checks the Dockerfile's promises, since no Docker engine runs
// here to build it: a pinned Go matching go.mod, a static binary, the version
// baked in, a non-root minimal final stage.
func TestDockerfile(t *testing.T) {
	root := repoRoot(t)
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(string(gomod))
	if goVersion == nil {
		t.Fatal("go.mod has no go line")
	}
	s := string(df)
	for _, want := range []string{
		"FROM golang:" + goVersion[1] + "-",
		"CGO_ENABLED=0",
		"-X github.com/kubedefender/kubedefender/version.Version=${VERSION}",
		"FROM gcr.io/distroless/static-debian12:nonroot",
		"USER 65532:65532",
		"COPY --from=build /out/kubedefender",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if n := len(regexp.MustCompile(`(?m)^FROM `).FindAllString(s, -1)); n != 2 || !strings.Contains(s, "AS build") {
		t.Errorf("want a two-stage build (a build stage and a final stage), got %d FROM lines", n)
	}
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
