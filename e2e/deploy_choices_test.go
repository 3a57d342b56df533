package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// componentsOverlay writes a kustomization that adds components to a base
// (all paths relative to root) and returns its directory.
func componentsOverlay(t *testing.T, root, base string, components ...string) string {
	t.Helper()
	dir := t.TempDir()
	rel := func(p string) string {
		r, err := filepath.Rel(dir, filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [%s]\ncomponents:\n", rel(base))
	for _, c := range components {
		fmt.Fprintf(&b, "- %s\n", rel(c))
	}
	writeTestFile(t, filepath.Join(dir, "kustomization.yaml"), b.String())
	return dir
}

// kustomize builds dir with kubectl kustomize and returns the objects.
func kustomize(t *testing.T, dir string) []map[string]any {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("failed to find kubectl on PATH (install it, e.g. the kubectl Debian package): %v", err)
	}
	var out, errOut bytes.Buffer
	cmd := exec.Command(kubectl, "kustomize", dir)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, errOut.String())
	}
	return splitManifests(t, out.Bytes())
}

func strs(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		out = append(out, fmt.Sprint(x))
	}
	return out
}

// TestDeployShipsWhatItDocuments checks the choices the manifests make, on
// what kustomize builds from them: one replica on the memory store in base,
// two on a password-protected Redis in deploy/redis, no rollout that cannot
// fit two nodes, a cert-manager annotation only with a shipped Certificate,
// and NetworkPolicies on ports that exist.
func TestDeployShipsWhatItDocuments(t *testing.T) {
	root := repoRoot(t)
	builds := map[string][]map[string]any{
		"deploy/base":       kustomize(t, filepath.Join(root, "deploy", "base")),
		"deploy/redis":      kustomize(t, filepath.Join(root, "deploy", "redis")),
		"deploy/production": kustomize(t, filepath.Join(root, "deploy", "production")),
		"base+components":   kustomize(t, componentsOverlay(t, root, "deploy/base", "deploy/cert-manager", "deploy/networkpolicy", "deploy/webhook-client-auth")),
	}
	guard := func(objs []map[string]any) (replicas float64, args []string, pod any) {
		d := findManifest(t, objs, "Deployment", "kubedefender")
		replicas, _ = manifestField(d, "spec", "replicas").(float64)
		pod = manifestField(d, "spec", "template", "spec")
		return replicas, strs(manifestField(pod, "containers", 0, "args")), pod
	}

	t.Run("base runs one replica on the memory store", func(t *testing.T) {
		replicas, args, _ := guard(builds["deploy/base"])
		if replicas != 1 || slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--redis-url") }) {
			t.Errorf("replicas %v args %v: want 1 replica without --redis-url", replicas, args)
		}
		for _, o := range builds["deploy/base"] {
			if o["kind"] == "PodDisruptionBudget" {
				t.Errorf("base ships a PodDisruptionBudget: with one replica, minAvailable 1 blocks every drain")
			}
		}
	})

	t.Run("the Redis variant runs two replicas that read the Redis password from the Secret Redis uses", func(t *testing.T) {
		objs := builds["deploy/redis"]
		replicas, args, pod := guard(objs)
		var pwFile string
		for _, a := range args {
			if v, ok := strings.CutPrefix(a, "--redis-password-file="); ok {
				pwFile = v
			}
		}
		if replicas != 2 || !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--redis-url=redis://") }) || pwFile == "" {
			t.Fatalf("replicas %v args %v: want 2 replicas with --redis-url and --redis-password-file", replicas, args)
		}
		var volume string
		for _, m := range manifestField(pod, "containers", 0, "volumeMounts").([]any) {
			if mp := fmt.Sprint(manifestField(m, "mountPath")); mp == filepath.Dir(pwFile) {
				volume = fmt.Sprint(manifestField(m, "name"))
			}
		}
		var secret string
		for _, v := range manifestField(pod, "volumes").([]any) {
			if fmt.Sprint(manifestField(v, "name")) == volume {
				secret = fmt.Sprint(manifestField(v, "secret", "secretName"))
			}
		}
		redisEnv := fmt.Sprint(manifestField(findManifest(t, objs, "Deployment", "kubedefender-redis"), "spec", "template", "spec", "containers", 0, "env"))
		if secret != "kubedefender-redis" || !strings.Contains(redisEnv, "name:kubedefender-redis") {
			t.Errorf("the password file %s comes from Secret %q and Redis's env is %s; want both from Secret kubedefender-redis", pwFile, secret, redisEnv)
		}
		np := findManifest(t, objs, "NetworkPolicy", "kubedefender-redis")
		if got := fmt.Sprint(manifestField(np, "spec", "ingress")); !strings.Contains(got, "app.kubernetes.io/name:kubedefender]") || strings.Count(got, "podSelector") != 1 {
			t.Errorf("Redis's NetworkPolicy admits %s; want only KubeDefender's pods", got)
		}
		findManifest(t, objs, "PodDisruptionBudget", "kubedefender")
	})

	t.Run("production authenticates the API server with the CA from the shipped ConfigMap mount", func(t *testing.T) {
		_, args, pod := guard(builds["deploy/production"])
		var caFile string
		for _, a := range args {
			if v, ok := strings.CutPrefix(a, "--webhook-client-ca-file="); ok {
				caFile = v
			}
		}
		if caFile == "" || !slices.Contains(args, "--webhook-client-allowed-names=kube-apiserver-webhook-client") {
			t.Fatalf("args %v: want --webhook-client-ca-file and --webhook-client-allowed-names", args)
		}
		mounts, volumes := fmt.Sprint(manifestField(pod, "containers", 0, "volumeMounts")), fmt.Sprint(manifestField(pod, "volumes"))
		if !strings.Contains(mounts, "mountPath:"+filepath.Dir(caFile)) || !strings.Contains(volumes, "name:kubedefender-webhook-client-ca") {
			t.Errorf("%s is not on a mount of the ConfigMap kubedefender-webhook-client-ca:\n%s\n%s", caFile, mounts, volumes)
		}
	})

	for name, objs := range builds {
		t.Run(name+": every rollout fits on two nodes", func(t *testing.T) {
			for _, o := range objs {
				if o["kind"] != "Deployment" {
					continue
				}
				if a := manifestField(o, "spec", "template", "spec", "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution"); a != nil {
					t.Errorf("Deployment %s requires pod anti-affinity: a surge pod cannot be placed when every node runs one", manifestField(o, "metadata", "name"))
				}
			}
		})
		t.Run(name+": a cert-manager annotation names a Certificate shipped with it", func(t *testing.T) {
			for _, o := range objs {
				ref, ok := manifestField(o, "metadata", "annotations", "cert-manager.io/inject-ca-from").(string)
				if !ok {
					continue
				}
				ns, cert, _ := strings.Cut(ref, "/")
				c := findManifest(t, objs, "Certificate", cert)
				if manifestField(c, "metadata", "namespace") != ns || manifestField(c, "spec", "secretName") != "kubedefender-tls" {
					t.Errorf("inject-ca-from %s: the Certificate must be in %s and issue the Secret kubedefender-tls the Deployment mounts", ref, ns)
				}
			}
		})
		t.Run(name+": NetworkPolicies name the ports the pods serve", func(t *testing.T) {
			_, _, pod := guard(objs)
			ports := fmt.Sprint(manifestField(pod, "containers", 0, "ports"))
			for _, o := range objs {
				if o["kind"] != "NetworkPolicy" || manifestField(o, "metadata", "name") != "kubedefender" {
					continue
				}
				got := fmt.Sprint(manifestField(o, "spec", "ingress"))
				for _, want := range []string{"port:webhook", "port:metrics", "kubernetes.io/metadata.name:monitoring"} {
					if !strings.Contains(got, want) {
						t.Errorf("the NetworkPolicy's ingress %s lacks %s", got, want)
					}
				}
				for _, p := range []string{"webhook", "metrics"} {
					if !strings.Contains(ports, "name:"+p) {
						t.Errorf("the NetworkPolicy admits port %s, which the pod does not serve (%s)", p, ports)
					}
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(root, "deploy", "cert-manager", "certificates.yaml")); err != nil {
		t.Fatal(err)
	}
}
