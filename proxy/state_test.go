package proxy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/utils/clock"
)

// TestMain makes a request that reaches a filter without its state a panic
// (an in-process test fails at once) and fails the run if any did (the
// server of a served test recovers the panic).
func TestMain(m *testing.M) {
	panicOnMissingState = true
	code := m.Run()
	if n := missingStates.Load(); n != 0 && code == 0 {
		fmt.Fprintf(os.Stderr, "FAIL: %d requests reached a filter outside WithRequestState\n", n)
		code = 1
	}
	os.Exit(code)
}

// forgetMissingStates takes back the missing states a test provoked, so that
// TestMain counts only unexpected ones.
func forgetMissingStates(t *testing.T) {
	before := missingStates.Load()
	t.Cleanup(func() { missingStates.Store(before) })
}

func ok200(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }

func TestAFilterOutsideTheRequestStateFailsLoudly(t *testing.T) {
	m := newMetrics()
	for _, tc := range []struct {
		name   string
		filter http.Handler
	}{
		{name: "the request attributes", filter: WithRequestAttributes(DefaultBodyReadTimeout, http.HandlerFunc(ok200))},
		{name: "the authentication", filter: WithAuthentication(AuthConfig{Mode: AuthPassthrough, Authenticator: authenticator.RequestFunc(func(*http.Request) (*authenticator.Response, bool, error) { return nil, false, nil })}, http.HandlerFunc(ok200))},
		{name: "the instrumentation", filter: WithInstrumentation(m, http.HandlerFunc(ok200))},
	} {
		t.Run(tc.name+" panics under test", func(t *testing.T) {
			forgetMissingStates(t)
			defer func() {
				if recover() == nil {
					t.Error("a filter ran without its state and nothing failed")
				}
			}()
			tc.filter.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/api/v1/pods", nil))
		})
		t.Run(tc.name+" is counted in production and the request goes on", func(t *testing.T) {
			forgetMissingStates(t)
			panicOnMissingState = false
			defer func() { panicOnMissingState = true }()
			before := missingStates.Load()
			w := httptest.NewRecorder()
			tc.filter.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/api/v1/pods", nil))
			if w.Code != http.StatusOK {
				t.Errorf("code = %d, want the request served", w.Code)
			}
			if got := testutil.ToFloat64(m.missingState); got != float64(before+1) {
				t.Errorf("missing_request_state_total = %v, want %d", got, before+1)
			}
		})
	}
}

func TestMovingInstrumentationKeepsTheRequestsIdentity(t *testing.T) {
	for _, tc := range []struct {
		name string
		// build is the chain inside WithRequestState; record notes the
		// state the first filter sees.
		build func(m *metrics, record func(http.Handler) http.Handler, last http.Handler) http.Handler
	}{
		{name: "instrumentation outside the attributes", build: func(m *metrics, record func(http.Handler) http.Handler, last http.Handler) http.Handler {
			return WithInstrumentation(m, record(WithRequestAttributes(DefaultBodyReadTimeout, last)))
		}},
		{name: "instrumentation inside the attributes", build: func(m *metrics, record func(http.Handler) http.Handler, last http.Handler) http.Handler {
			return record(WithRequestAttributes(DefaultBodyReadTimeout, WithInstrumentation(m, last)))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMetrics()
			var atFirst, atLast *reqState
			record := func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					atFirst = stateOf(r)
					next.ServeHTTP(w, r)
				})
			}
			last := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				atLast = stateOf(r)
				w.WriteHeader(http.StatusOK)
			})
			h := WithRequestState(clock.RealClock{}, tc.build(m, record, last))

			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/api/v1/namespaces/default/pods", nil))

			if atFirst == nil || atFirst != atLast {
				t.Fatalf("the first and the last filter saw states %p and %p, want one", atFirst, atLast)
			}
			if atLast.attrs.Verb != "list" {
				t.Errorf("the last filter saw verb %q, want list", atLast.attrs.Verb)
			}
			if got := testutil.ToFloat64(m.requests.WithLabelValues("list", "200")); got != 1 {
				t.Errorf("requests_total{verb=list,code=200} = %v, want 1", got)
			}
			reg := prometheus.NewPedanticRegistry()
			if err := m.register(reg); err != nil {
				t.Fatal(err)
			}
			if n, err := testutil.GatherAndCount(reg, "kubedefender_proxy_missing_request_state_total"); err != nil || n != 0 {
				t.Errorf("missing_request_state_total has %d series (%v), want none from a chain built right", n, err)
			}
		})
	}
}
