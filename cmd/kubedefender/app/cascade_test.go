package app

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"k8s.io/client-go/rest"

	"github.com/kubedefender/kubedefender/policy"
)

func TestCascadesReadyz(t *testing.T) {
	// An API server that answers nothing: the counter never syncs.
	unreachable := &rest.Config{Host: "http://127.0.0.1:1"}
	cases := []struct {
		name      string
		kube      *rest.Config
		cascades  string
		wantReady bool
	}{
		{name: "a PerObject policy is ready without a counter", kube: unreachable, cascades: "PerObject", wantReady: true},
		{name: "an AtRoot policy is not ready until the counter has synced", kube: unreachable, cascades: "AtRoot", wantReady: false},
		{name: "an AtRoot policy without a kube config is ready (it judges PerObject, logged)", kube: nil, cascades: "AtRoot", wantReady: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newCascades(tc.kube, slog.New(slog.DiscardHandler), podsDownPolicy(t, tc.cascades))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			c.start(ctx)
			rec := httptest.NewRecorder()
			c.readyz(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })).
				ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			if got := rec.Code == http.StatusOK; got != tc.wantReady {
				t.Errorf("/readyz = %d %q, want ready %v", rec.Code, rec.Body.String(), tc.wantReady)
			}
		})
	}
}

func TestCascadesStartWhenAReloadAddsAnAtRootBudget(t *testing.T) {
	perObject, atRoot := podsDownPolicy(t, ""), podsDownPolicy(t, "AtRoot")
	c := newCascades(&rest.Config{Host: "http://127.0.0.1:1"}, slog.New(slog.DiscardHandler), perObject)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.start(ctx)
	if c.counter.Load() != nil {
		t.Fatal("a counter was built for a policy without AtRoot budgets")
	}
	c.setPolicy(atRoot)
	if c.counter.Load() == nil {
		t.Fatal("no counter was built when a reload added an AtRoot budget")
	}
	if c.ready() {
		t.Error("ready before the counter synced")
	}
}

// podsDownPolicy compiles a policy of one budget on pod deletes whose
// cascades field is cascades (empty: not set).
func podsDownPolicy(t *testing.T, cascades string) *policy.Compiled {
	t.Helper()
	if cascades != "" {
		cascades = "    cascades: " + cascades + "\n"
	}
	p, err := policy.Parse("p.yaml", []byte(`apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: t}
spec:
  budgets:
  - name: pods-down
    match: {verbs: [delete], resources: [pods]}
`+cascades+`    windows: [{window: 1m, limit: 20}]
`))
	if err != nil {
		t.Fatal(err)
	}
	return p
}
