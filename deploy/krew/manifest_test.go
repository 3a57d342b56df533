// Package krew holds the krew plugin manifest template (defender.yaml) and
// the test that keeps it well formed.
package krew

import (
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

type manifest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version          string `json:"version"`
		ShortDescription string `json:"shortDescription"`
		Description      string `json:"description"`
		Homepage         string `json:"homepage"`
		Platforms        []struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			URI    string `json:"uri"`
			SHA256 string `json:"sha256"`
			Files  []struct {
				From string `json:"from"`
				To   string `json:"to"`
			} `json:"files"`
			Bin string `json:"bin"`
		} `json:"platforms"`
	} `json:"spec"`
}

// TestManifestDescribesThePluginForEveryPlatform: the template parses as a
// krew Plugin named defender, with one entry per linux/darwin × amd64/arm64,
// each with placeholders for its own archive and checksum, installing
// kubedefender as kubectl-defender.
func TestManifestDescribesThePluginForEveryPlatform(t *testing.T) {
	raw, err := os.ReadFile("defender.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var m manifest
	if err := yaml.UnmarshalStrict(raw, &m); err != nil {
		t.Fatalf("defender.yaml is not a krew manifest: %v", err)
	}
	if m.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || m.Kind != "Plugin" || m.Metadata.Name != "defender" {
		t.Fatalf("got %s %s %q, want krew.googlecontainertools.github.com/v1alpha2 Plugin \"defender\"", m.APIVersion, m.Kind, m.Metadata.Name)
	}
	if m.Spec.Version != "{{VERSION}}" || m.Spec.ShortDescription == "" {
		t.Fatalf("version %q, shortDescription %q: want the {{VERSION}} placeholder and a description", m.Spec.Version, m.Spec.ShortDescription)
	}
	want := map[string]bool{"linux/amd64": true, "linux/arm64": true, "darwin/amd64": true, "darwin/arm64": true}
	for _, p := range m.Spec.Platforms {
		platform := p.Selector.MatchLabels["os"] + "/" + p.Selector.MatchLabels["arch"]
		if !want[platform] {
			t.Fatalf("platform %q is unexpected or listed twice", platform)
		}
		delete(want, platform)
		suffix := strings.ToUpper(strings.ReplaceAll(platform, "/", "_"))
		if p.URI != "{{URI_"+suffix+"}}" || p.SHA256 != "{{SHA256_"+suffix+"}}" {
			t.Errorf("%s: uri %q sha256 %q, want its own placeholders", platform, p.URI, p.SHA256)
		}
		if p.Bin != "kubectl-defender" || len(p.Files) != 1 || p.Files[0].From != "kubedefender" || p.Files[0].To != "kubectl-defender" {
			t.Errorf("%s: bin %q files %+v, want kubedefender installed as kubectl-defender", platform, p.Bin, p.Files)
		}
	}
	if len(want) != 0 {
		t.Fatalf("platforms missing: %v", want)
	}
}
