package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/pki"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/webhook"
)

// scenarioLabel marks the namespaces one scenario's webhook configuration
// selects, so that scenarios sharing a control plane never see each other.
const scenarioLabel = "kubedefender-e2e"

// defender is one KubeDefender webhook running in the test process, built
// from the same parts `kubedefender serve` wires: a policy watcher, a memory
// store, the engine, the webhook handler and its TLS server.
type defender struct {
	Name       string
	PolicyFile string
	Clock      *clocktesting.FakeClock // nil: real time
	Watcher    *policy.Watcher
	Engine     *limiter.Engine
	Registry   *prometheus.Registry
	Server     *webhook.Server
	CA         *pki.CA
	// Seen counts the AdmissionReviews the webhook received.
	Seen atomic.Int64

	stop    context.CancelFunc
	stopped chan struct{}
	once    sync.Once
}

type defenderOptions struct {
	// FakeClock drives the store and engine with a fake clock.
	FakeClock bool
	// Watch reloads the policy file when it changes.
	Watch bool
	// Store replaces the memory store (fault injection).
	Store limiter.Store
	// Cascades counts what roots remove, for AtRoot budgets.
	Cascades webhook.Cascades
}

// startDefender writes policyYAML to a file and serves a webhook for it on
// 127.0.0.1:0 with a freshly generated CA; it stops when t ends.
func startDefender(t *testing.T, name, policyYAML string, o defenderOptions) *defender {
	t.Helper()
	dir := t.TempDir()
	d := &defender{Name: name, PolicyFile: filepath.Join(dir, "policy.yaml"), Registry: prometheus.NewRegistry(), stopped: make(chan struct{})}
	if err := os.WriteFile(d.PolicyFile, []byte(policyYAML), 0o600); err != nil {
		t.Fatalf("failed to write the policy: %v", err)
	}
	logPath := filepath.Join(dir, "webhook.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("failed to create the log: %v", err)
	}
	t.Cleanup(func() {
		_ = logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- webhook %s log ----\n%s", name, b)
		}
	})
	log := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d.Watcher, err = policy.NewWatcher(policy.WatcherConfig{Path: d.PolicyFile, Registerer: d.Registry, Debounce: 50 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatalf("failed to load the policy: %v", err)
	}
	var clk clock.PassiveClock = clock.RealClock{}
	if o.FakeClock {
		d.Clock = clocktesting.NewFakeClock(time.Now())
		clk = d.Clock
	}
	var store limiter.Store = limiter.NewMemoryStore(limiter.MemoryConfig{Clock: clk})
	if o.Store != nil {
		store = o.Store
	}
	d.Engine, err = limiter.NewEngine(limiter.EngineConfig{Policy: d.Watcher.Current(), Store: store, Clock: clk, Registerer: d.Registry, Logger: log})
	if err != nil {
		t.Fatalf("failed to build the engine: %v", err)
	}
	d.Watcher.Subscribe("engine", policy.SubscriberFunc(d.Engine.SetPolicy))
	h, err := webhook.NewHandler(webhook.Config{Engine: d.Engine, Registerer: d.Registry, Logger: log, Cascades: o.Cascades})
	if err != nil {
		t.Fatalf("failed to build the handler: %v", err)
	}
	d.CA, err = pki.NewCA(pki.CAOptions{CommonName: "e2e-" + name})
	if err != nil {
		t.Fatalf("%v", err)
	}
	pair, err := d.CA.Issue(pki.ServingOptions{IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatalf("%v", err)
	}
	if err := pki.WriteFiles(dir, d.CA, pair, false); err != nil {
		t.Fatalf("%v", err)
	}
	certs, err := webhook.NewCertReloader(webhook.CertConfig{CertFile: filepath.Join(dir, pki.CertFile), KeyFile: filepath.Join(dir, pki.KeyFile), Logger: log})
	if err != nil {
		t.Fatalf("%v", err)
	}
	counting := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == webhook.Path {
			d.Seen.Add(1)
		}
		h.ServeHTTP(w, r)
	})
	d.Server, err = webhook.NewServer(webhook.ServerConfig{Addr: "127.0.0.1:0", Handler: counting, Certificates: certs, ShutdownTimeout: 5 * time.Second, Logger: log})
	if err != nil {
		t.Fatalf("%v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	var wg sync.WaitGroup
	if o.Watch {
		wg.Add(1)
		go func() { defer wg.Done(); _ = d.Watcher.Run(ctx) }()
	}
	go func() {
		defer close(d.stopped)
		if err := d.Server.Run(ctx); err != nil {
			t.Errorf("webhook %s: %v", name, err)
		}
		wg.Wait()
	}()
	t.Cleanup(d.Stop)
	return d
}

// Stop kills the webhook (its port refuses connections afterwards).
func (d *defender) Stop() {
	d.once.Do(func() {
		d.stop()
		<-d.stopped
	})
}

// register applies a ValidatingWebhookConfiguration for d's policy that
// selects the namespaces labelled scenarioLabel=scenario, and waits until the
// API server calls the webhook: it dry-run-deletes a canary pod in a canary
// namespace of the scenario until the webhook sees a review.
func (d *defender) register(t *testing.T, cp *framework.ControlPlane, scenario string, fp admissionregistrationv1.FailurePolicyType) {
	t.Helper()
	cfg, _, err := webhook.BuildConfiguration(d.Watcher.Current(), webhook.ConfigurationOptions{
		Name:              "kd-" + scenario + "-" + strings.ToLower(string(fp)),
		URL:               d.Server.URL(),
		CABundle:          d.CA.CertPEM,
		FailurePolicy:     fp,
		TimeoutSeconds:    3,
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{scenarioLabel: scenario}},
	})
	if err != nil {
		t.Fatalf("failed to build the webhook configuration: %v", err)
	}
	ctx := context.Background()
	if _, err := webhook.ApplyConfiguration(ctx, cp.Client, cfg); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		_ = cp.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(context.Background(), cfg.Name, metav1.DeleteOptions{})
	})
	canaryNS := scenario + "-canary"
	if _, err := cp.Client.CoreV1().Namespaces().Get(ctx, canaryNS, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		createNamespace(t, cp, canaryNS, scenario)
		createPods(t, cp.Client, canaryNS, "canary", 1)
	}
	before := d.Seen.Load()
	framework.Eventually(t, 30*time.Second, "the API server to call webhook "+cfg.Name, func(ctx context.Context) (bool, error) {
		err := cp.Client.CoreV1().Pods(canaryNS).Delete(ctx, "canary-0", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		return d.Seen.Load() > before, err
	})
}

// createNamespace creates ns (with its default service account) labelled for
// scenario.
func createNamespace(t *testing.T, cp *framework.ControlPlane, ns, scenario string) {
	t.Helper()
	cp.CreateNamespace(t, ns)
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, scenarioLabel, scenario)
	if _, err := cp.Client.CoreV1().Namespaces().Patch(context.Background(), ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("failed to label namespace %s: %v", ns, err)
	}
}

// createPods creates n pods prefix-0 … prefix-(n-1) in ns and returns their names.
func createPods(t *testing.T, c kubernetes.Interface, ns, prefix string, n int) []string {
	t.Helper()
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("%s-%d", prefix, i)
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: names[i], Labels: map[string]string{"app": prefix}},
			Spec: corev1.PodSpec{
				Containers:                    []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
				TerminationGracePeriodSeconds: ptr.To[int64](0),
			},
		}
		if _, err := c.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("failed to create pod %s/%s: %v", ns, names[i], err)
		}
	}
	return names
}

// countPods counts the pods of ns.
func countPods(t *testing.T, c kubernetes.Interface, ns string) int {
	t.Helper()
	l, err := c.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("failed to list pods in %s: %v", ns, err)
	}
	return len(l.Items)
}

// deletePod deletes one pod once: no client-side retry even on a 429 with
// Retry-After (client-go would otherwise wait and retry up to ten times).
func deletePod(ctx context.Context, c kubernetes.Interface, ns, name string) error {
	return c.CoreV1().RESTClient().Delete().Namespace(ns).Resource("pods").Name(name).MaxRetries(0).Do(ctx).Error()
}

// mustDelete deletes pods one by one, failing t on the first error.
func mustDelete(t *testing.T, c kubernetes.Interface, ns string, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := deletePod(context.Background(), c, ns, n); err != nil {
			t.Fatalf("failed to delete pod %s/%s: %v", ns, n, err)
		}
	}
}

// wantDenied checks that err is the webhook's denial with the given HTTP code
// and a message containing every want.
func wantDenied(t *testing.T, err error, code int32, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("the request was admitted, want a denial with code %d", code)
	}
	var se apierrors.APIStatus
	if !errors.As(err, &se) {
		t.Fatalf("error %v is not an API status", err)
	}
	if got := se.Status().Code; got != code {
		t.Errorf("status code = %d, want %d (error: %v)", got, code, err)
	}
	msg := se.Status().Message
	if !strings.Contains(msg, `admission webhook "budgets.kubedefender.io" denied the request`) {
		t.Errorf("message %q does not name the webhook", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q does not contain %q", msg, w)
		}
	}
}

// counter sums the values of the counter name whose labels include labels.
func counter(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("failed to gather metrics: %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, labels) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	got := map[string]string{}
	for _, lp := range m.GetLabel() {
		got[lp.GetName()] = lp.GetValue()
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// warnings collects the warnings the API server sent a client.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string{}, w.list...)
}

var _ rest.WarningHandler = (*warnings)(nil)
