package app

import (
	"strings"
	"testing"
)

// TestGrantRefusesAFreeTextRequester: --requested-by let anyone sign an
// override with another name; requestedBy is now who the API server
// authenticates (checked at admission).
func TestGrantRefusesAFreeTextRequester(t *testing.T) {
	t.Setenv("KUBECONFIG", "/nonexistent/kubeconfig") // never reach a real cluster
	code, _, stderr := run(t, "breakglass", "grant", "--budget", "pod-deletes", "--for", "10m", "--reason", "INC-1: drain", "--requested-by", "alice")
	if code == 0 || !strings.Contains(stderr, "--requested-by is gone") || !strings.Contains(stderr, "--reason") {
		t.Fatalf("exit %d, stderr %q: want a refusal that says to name who asked in --reason", code, stderr)
	}
}
