package webhook

import (
	"bytes"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// TestGoldenWire pins the exact AdmissionReview JSON on the wire: each case
// sends testdata/golden/NAME.request.json (after the setup requests) and
// compares the answer byte for byte with NAME.response.json. Run with -update
// to rewrite the responses after an intended change, and read the diff.
func TestGoldenWire(t *testing.T) {
	cases := []struct {
		name  string
		setup []reviewSpec
	}{
		{name: "delete-allowed"},
		{name: "delete-denied-window-exhausted-manual-breaker",
			setup: []reviewSpec{pods("DELETE", "prod", "web-1"), pods("DELETE", "prod", "web-2")}},
		{name: "delete-denied-auto-breaker-retry-after",
			setup: []reviewSpec{{op: "DELETE", group: "apps", resource: "deployments", ns: "prod", name: "api"}}},
		{name: "delete-allowed-shadow-warning",
			setup: []reviewSpec{{op: "DELETE", resource: "configmaps", ns: "prod", name: "c1"}}},
		{name: "eviction-denied-breaker-open",
			setup: []reviewSpec{pods("DELETE", "prod", "web-1"), pods("DELETE", "prod", "web-2"), pods("DELETE", "prod", "web-3")}},
		{name: "override-exempt"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newTestEnv(t, Config{})
			for _, s := range tc.setup {
				post(env.h, s.json(), "application/json")
			}
			in, err := os.ReadFile(filepath.Join("testdata", "golden", tc.name+".request.json"))
			if err != nil {
				t.Fatalf("failed to read the request: %v", err)
			}
			rec := post(env.h, string(in), "application/json")
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			// The file ends with a newline the wire answer does not have.
			checkGolden(t, filepath.Join("testdata", "golden", tc.name+".response.json"), append(rec.Body.Bytes(), '\n'))
		})
	}
}

// checkGolden fails t unless got is the content of the golden file at path;
// with -update it writes got there first.
func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("failed to read %s (run with -update to create it): %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n got: %s\nwant: %s", path, got, want)
	}
}
