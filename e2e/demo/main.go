package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kubedefender/kubedefender/e2e/framework"
)

type options struct {
	pods  int
	limit int
	wait  bool
}

func main() {
	var o options
	flag.IntVar(&o.pods, "pods", 30, "pods the scripted mass delete targets")
	flag.IntVar(&o.limit, "limit", 10, "pod deletes per minute per namespace the policy allows")
	flag.BoolVar(&o.wait, "wait", false, "keep the control plane and KubeDefender running after the demo, until Ctrl-C")
	flag.Parse()
	if o.limit < 1 || o.pods <= o.limit {
		fmt.Fprintln(os.Stderr, "demo: want 1 <= -limit < -pods")
		os.Exit(2)
	}
	r := &runner{log: os.Stdout}
	code := 0
	func() {
		defer func() {
			if p := recover(); p != nil {
				var f errFatal
				if e, ok := p.(errFatal); ok {
					f = e
				} else {
					panic(p)
				}
				fmt.Fprintf(os.Stderr, "\ndemo failed: %s\n", f.msg)
				code = 1
			}
		}()
		demo(r, o)
	}()
	fmt.Println("\n==> Tearing down (KubeDefender, kube-apiserver, etcd)")
	r.cleanup()
	os.Exit(code)
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func demo(r *runner, o options) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := moduleRoot(r)

	fmt.Printf("KubeDefender demo: a local control plane, the kubedefender webhook with a budget of %d pod deletes\n"+
		"per minute per namespace (Manual breaker), and a scripted `kubectl delete pods --all` on %d pods.\n", o.limit, o.pods)

	step("Finding the control plane binaries (etcd, kube-apiserver), built from the Go module proxy")
	fmt.Println("    (on a fresh machine e2e/tools/build.sh builds them now: about 10 minutes, cached afterwards)")
	// FindBinaries remembers its first answer: allow the build before asking.
	if os.Getenv(framework.EnvBinDir) == "" {
		if err := os.Setenv(framework.EnvBuild, "1"); err != nil {
			r.Fatalf("%v", err)
		}
	}
	bins, err := framework.FindBinaries()
	if err != nil {
		r.Fatalf("%v", err)
	}
	fmt.Printf("    %s\n", bins.Dir)
	step("Building kubedefender")
	dir := r.TempDir()
	bin := filepath.Join(dir, "kubedefender")
	runCmd(r, root, "go", "build", "-o", bin, "./cmd/kubedefender")
	fmt.Printf("    %s\n", bin)

	step("Starting a local control plane (etcd + kube-apiserver)")
	cp := framework.Start(r, framework.Options{})

	step("Generating the webhook's serving certificate: kubedefender certs generate")
	certs := filepath.Join(dir, "certs")
	runCmd(r, dir, bin, "certs", "generate", "--ip", "127.0.0.1", "--out-dir", certs)

	policyFile := filepath.Join(dir, "policy.yaml")
	policy := fmt.Sprintf(`apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata:
  name: demo
spec:
  budgets:
  - name: pod-deletes
    match:
      verbs: [delete, deletecollection, evict]
      resources: [pods]
    exclude:
      serviceAccounts: [kube-system/generic-garbage-collector, kube-system/namespace-controller]
    per: [namespace]
    windows:
    - {window: 1m, limit: %d}
    - {window: 1h, limit: %d}
    breaker:
      recovery: Manual
`, o.limit, o.limit*5)
	if err := os.WriteFile(policyFile, []byte(policy), 0o600); err != nil {
		r.Fatalf("failed to write the policy: %v", err)
	}
	step("The policy (%s)", policyFile)
	fmt.Print(indent(policy))

	step("Installing the Override CRD (break-glass) from deploy/base")
	if out, stderr, err := cp.Kubectl(r, cp.AdminKubeconfig, "apply", "-f", filepath.Join(root, "deploy", "base", "crd-override.yaml")); err != nil {
		r.Fatalf("failed to apply the Override CRD: %v\n%s%s", err, out, stderr)
	} else {
		fmt.Print(indent(out))
	}
	cp.CreateNamespace(r, "kubedefender-system")

	webhookAddr, metricsAddr := freeAddr(r), freeAddr(r)
	step("Starting kubedefender serve (webhook on %s, metrics on %s)", webhookAddr, metricsAddr)
	logFile := filepath.Join(dir, "kubedefender.log")
	startServe(r, bin, logFile, "serve", "--policy", policyFile, "--kubeconfig", cp.AdminKubeconfig, "--webhook-listen", webhookAddr, "--metrics-listen", metricsAddr,
		"--tls-cert-file", filepath.Join(certs, "tls.crt"), "--tls-private-key-file", filepath.Join(certs, "tls.key"), "--log-format", "text")
	metricsURL := "http://" + metricsAddr + "/metrics"
	framework.Eventually(r, 30*time.Second, "kubedefender to serve", func(ctx context.Context) (bool, error) {
		_, err := scrape(ctx, metricsURL, "kubedefender_webhook_requests_total")
		return err == nil, nil
	})
	fmt.Printf("    logs: %s\n", logFile)

	step("Registering it with the API server: kubedefender webhook config --apply")
	out := runCmd(r, dir, bin, "webhook", "config", "--policy", policyFile, "--url", "https://"+webhookAddr+"/validate",
		"--ca-bundle-file", filepath.Join(certs, "ca.crt"), "--failure-policy", "Fail", "--apply", "--kubeconfig", cp.AdminKubeconfig)
	fmt.Print(indent(out))

	fmt.Printf("\n    To use this cluster yourself:\n\n        export KUBECONFIG=%s\n", cp.AdminKubeconfig)

	const ns = "shop"
	step("Creating namespace %q with %d pods", ns, o.pods)
	cp.CreateNamespace(r, ns)
	for i := range o.pods {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%02d", i), Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/web:1"}},
				TerminationGracePeriodSeconds: ptr.To[int64](0)},
		}
		if _, err := cp.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			r.Fatalf("failed to create pod %s: %v", p.Name, err)
		}
	}
	// The API server picks the webhook configuration up within a second or two;
	// a server-side dry run is judged by the webhook and charges nothing.
	framework.Eventually(r, 30*time.Second, "the API server to call the webhook", func(ctx context.Context) (bool, error) {
		_ = cp.Client.CoreV1().Pods(ns).Delete(ctx, "web-00", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		v, err := scrape(ctx, metricsURL, `kubedefender_webhook_requests_total{operation="DELETE",result="allowed"}`)
		return v > 0, err
	})
	fmt.Printf("    kubectl get pods -n %s: %d pods\n", ns, countPods(r, cp, ns))

	step("The mistake: kubectl delete pods --all -n %s", ns)
	stdout, stderr, kerr := cp.Kubectl(r, cp.AdminKubeconfig, "delete", "pods", "--all", "-n", ns, "--wait=false")
	deleted := strings.Count(stdout, " deleted")
	fmt.Print(indent(firstLines(stdout, 3)))
	if deleted > 3 {
		fmt.Printf("    ... (%d pods deleted in all)\n", deleted)
	}
	denials := strings.Count(stderr, "denied the request")
	if first := firstLine(stderr); first != "" {
		fmt.Printf("\n    kubectl then reported %d denials (and exited non-zero: %t); the first one:\n\n%s\n", denials, kerr != nil, wrap(first, 100, "      "))
	}

	step("What is left")
	left := countPods(r, cp, ns)
	fmt.Printf("    kubectl get pods -n %s: %d of %d pods remain (budget: %d per minute; the breaker is now Open)\n", ns, left, o.pods, o.limit)

	step("KubeDefender's counters (curl %s)", metricsURL)
	for _, prefix := range []string{"kubedefender_webhook_requests_total{operation=\"DELETE\"", "kubedefender_limiter_decisions_total{front=\"webhook\"", "kubedefender_limiter_breaker_transitions_total"} {
		lines, err := metricLines(ctx, metricsURL, prefix)
		if err != nil {
			r.Fatalf("failed to read the metrics: %v", err)
		}
		for _, l := range lines {
			fmt.Printf("    %s\n", l)
		}
	}

	allowed, _ := scrape(ctx, metricsURL, `kubedefender_webhook_requests_total{operation="DELETE",result="allowed"}`)
	denied, _ := scrape(ctx, metricsURL, `kubedefender_webhook_requests_total{operation="DELETE",result="denied"}`)
	fmt.Printf("\n    allowed %.0f = the %d pods deleted + %.0f server-side dry run(s) the demo sent to see the webhook answer (judged, charged nothing)\n",
		allowed, deleted, allowed-float64(deleted))
	fmt.Printf("    denied %.0f = the %d denials kubectl reported; repeat: the API server calls the webhook again for a pod it already judged, charged once\n",
		denied, denials)
	if allowed < float64(deleted) || denied != float64(denials) {
		r.Errorf("the webhook's counters do not match what kubectl saw: allowed %.0f for %d deleted, denied %.0f for %d denials", allowed, deleted, denied, denials)
	}

	step("Result")
	if deleted != o.limit || left != o.pods-o.limit {
		r.Errorf("expected %d pods deleted and %d left, got %d deleted and %d left", o.limit, o.pods-o.limit, deleted, left)
	}
	fmt.Printf("    The breaker stopped the mass delete after %d of %d pods. Recovery is Manual: every\n", deleted, o.pods)
	fmt.Printf("    delete in %q is denied until someone with RBAC on Overrides grants a break-glass override.\n", ns)

	if i := strings.Index(stderr, "kubedefender breakglass grant "); i >= 0 {
		cmdline := strings.SplitN(stderr[i:], "\n", 2)[0]
		cmdline, _, _ = strings.Cut(cmdline, ` --reason "<ticket>: <why>"`)
		args := strings.Fields(cmdline)[1:]
		args = append(args, "--reason", "DEMO-1: the delete was intended", "--kubeconfig", cp.AdminKubeconfig)
		step("The way out, as the denial says: %s --reason \"DEMO-1: the delete was intended\"", cmdline)
		fmt.Print(indent(runCmd(r, dir, bin, args...)))
		// A server-side dry run is judged by the webhook and deletes nothing:
		// it is admitted once the override is in force, and the pods the
		// second kubectl delete finds are exactly those left above.
		remaining, err := cp.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{Limit: 1})
		if err != nil || len(remaining.Items) == 0 {
			r.Fatalf("failed to find a pod left to probe the override with: %v", err)
		}
		probe := remaining.Items[0].Name
		framework.Eventually(r, 20*time.Second, "the override to apply", func(ctx context.Context) (bool, error) {
			err := cp.Client.CoreV1().Pods(ns).Delete(ctx, probe, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
			return err == nil, nil
		})
		stdout, stderr, kerr = cp.Kubectl(r, cp.AdminKubeconfig, "delete", "pods", "--all", "-n", ns, "--wait=false")
		if kerr != nil {
			r.Errorf("kubectl delete under the override: %v\n%s", kerr, stderr)
		}
		again, final := strings.Count(stdout, " deleted"), countPods(r, cp, ns)
		fmt.Printf("    kubectl delete pods --all -n %s again: %d more deleted; %d pods left\n", ns, again, final)
		fmt.Printf("    In all: %d deleted within the budget + %d under the override = %d of %d pods\n", deleted, again, deleted+again, o.pods)
		if again != left || final != 0 || deleted+again != o.pods {
			r.Errorf("the numbers do not add up: %d deleted, then %d of the %d left, %d remain (of %d)", deleted, again, left, final, o.pods)
		}
	}

	if o.wait {
		step("Still running; press Ctrl-C to stop")
		fmt.Printf("    export KUBECONFIG=%s\n    kubectl get pods -n %s\n    curl -s %s | grep kubedefender_\n", cp.AdminKubeconfig, ns, metricsURL)
		<-ctx.Done()
	}
	if r.Failed() {
		r.Fatalf("the demo did not go as expected")
	}
}

// moduleRoot is the directory of the main module (the demo runs from it with
// `go run ./e2e/demo`, but may be run from elsewhere too).
func moduleRoot(r *runner) string {
	_, file, _, ok := runtime.Caller(0)
	if ok {
		root := filepath.Join(filepath.Dir(file), "..", "..")
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			return root
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		r.Fatalf("failed to find the module root: %v", err)
	}
	return wd
}

// runCmd runs a command to completion and returns its stdout; a failure is fatal.
func runCmd(r *runner, dir, name string, args ...string) string {
	var out, errOut strings.Builder
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		r.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String()
}

// startServe starts a long-running kubedefender process whose output goes to
// logFile; it is stopped (SIGTERM, then SIGKILL) when the demo ends.
func startServe(r *runner, bin, logFile string, args ...string) {
	f, err := os.Create(logFile)
	if err != nil {
		r.Fatalf("failed to create %s: %v", logFile, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		r.Fatalf("failed to start kubedefender: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	r.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		_ = f.Close()
	})
}

func freeAddr(r *runner) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.Fatalf("failed to find a free port: %v", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

func countPods(r *runner, cp *framework.ControlPlane, ns string) int {
	l, err := cp.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		r.Fatalf("failed to list pods: %v", err)
	}
	return len(l.Items)
}

// metricLines returns the metric lines that start with prefix and have a
// non-zero value.
func metricLines(ctx context.Context, url, prefix string) ([]string, error) {
	body, err := get(ctx, url)
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, prefix) && !strings.HasSuffix(l, " 0") {
			out = append(out, l)
		}
	}
	return out, nil
}

// scrape returns the value of series (name{labels}), or -1 when absent.
func scrape(ctx context.Context, url, series string) (float64, error) {
	body, err := get(ctx, url)
	if err != nil {
		return -1, err
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			return f, err
		}
	}
	return -1, nil
}

func get(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

func firstLine(s string) string { return firstLines(s, 1) }

// wrap breaks s into lines of at most width characters, each prefixed.
func wrap(s string, width int, prefix string) string {
	var b strings.Builder
	line := prefix
	for _, w := range strings.Fields(s) {
		if len(line)+len(w)+1 > width && line != prefix {
			b.WriteString(line + "\n")
			line = prefix
		}
		if line != prefix {
			line += " "
		}
		line += w
	}
	b.WriteString(line)
	return b.String()
}
