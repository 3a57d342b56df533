package serving

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kubedefender/kubedefender/pki"
)

// writePair issues a serving pair for 127.0.0.1 from ca and writes it (and
// the CA) into dir, replacing what was there.
func writePair(t *testing.T, dir string, ca *pki.CA) *pki.Pair {
	t.Helper()
	pair, err := ca.Issue(pki.ServingOptions{IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFiles(dir, ca, pair, false); err != nil {
		t.Fatal(err)
	}
	return pair
}

func newCA(t *testing.T, cn string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(pki.CAOptions{CommonName: cn})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func certFiles(dir string) (string, string) {
	return filepath.Join(dir, pki.CertFile), filepath.Join(dir, pki.KeyFile)
}

// waitFor polls cond until it holds, failing t after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 10*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		t.Fatalf("%s: not within 10s", what)
	}
}

// runInBackground runs run until the test ends, and fails the test when it
// returns an error.
func runInBackground(t *testing.T, run func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run returned %v", err)
		}
	})
}
