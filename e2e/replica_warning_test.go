package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/pki"
)

// TestMemoryStoreWarnsAboutOtherReplicas runs `kubedefender serve` on the
// memory store as a pod of a Deployment would (POD_NAME, POD_NAMESPACE)
// against a real API server whose controllers made that Deployment's
// ReplicaSet and pods, and checks it warns that its counters are not shared.
func TestMemoryStoreWarnsAboutOtherReplicas(t *testing.T) {
	cases := []struct {
		name     string
		replicas int32
		warns    bool
	}{
		{name: "two replicas on a memory store are warned about", replicas: 2, warns: true},
		{name: "one replica is not", replicas: 1, warns: false},
	}
	// Given a real API server with the Deployment and ReplicaSet controllers
	cp := framework.Start(t, framework.Options{ControllerManager: true})
	bin := buildKubedefender(t)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	kd(t, bin, "certs", "generate", "--ip", "127.0.0.1", "--out-dir", certs)
	policyFile := filepath.Join(dir, "policy.yaml")
	writePolicy(t, policyFile, budgetPolicy("replicas", manualBreaker, 5, "1m"))
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// And a Deployment of kubedefender with that many replicas, whose pods exist (unscheduled)
			ns := fmt.Sprintf("kd-replicas-%d", i)
			cp.CreateNamespace(t, ns)
			labels := map[string]string{"app.kubernetes.io/name": "kubedefender"}
			_, err := cp.Client.AppsV1().Deployments(ns).Create(context.Background(), &appsv1.Deployment{
				ObjectMeta: metav1.ObjectMeta{Name: "kubedefender"},
				Spec: appsv1.DeploymentSpec{Replicas: ptr.To(tc.replicas), Selector: &metav1.LabelSelector{MatchLabels: labels},
					Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
						Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "kubedefender", Image: "registry.invalid/kubedefender:1"}}}}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var pod string
			framework.Eventually(t, 60*time.Second, "the Deployment's pods to exist", func(ctx context.Context) (bool, error) {
				l, err := cp.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
				if err != nil || len(l.Items) != int(tc.replicas) {
					return false, err
				}
				pod = l.Items[0].Name
				return true, nil
			})

			// When serve runs on the memory store as one of those pods
			cmd := exec.Command(bin, "serve", "--policy", policyFile, "--kubeconfig", cp.AdminKubeconfig,
				"--webhook-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
				"--tls-cert-file", filepath.Join(certs, pki.CertFile), "--tls-private-key-file", filepath.Join(certs, pki.KeyFile), "--log-format", "text")
			cmd.Env = append(os.Environ(), "POD_NAME="+pod, "POD_NAMESPACE="+ns)
			logFile := startProcess(t, "serve", cmd)

			// Then it warns, naming the Deployment and the count, only when there are others
			want := fmt.Sprintf("workload=Deployment/kubedefender replicas=%d", tc.replicas)
			var log string
			framework.Eventually(t, 30*time.Second, "serve to check its Deployment", func(context.Context) (bool, error) {
				b, err := os.ReadFile(logFile)
				log = string(b)
				return strings.Contains(log, want), err
			})
			if warned := strings.Contains(log, "level=WARN msg=\"other replicas run on a memory store"); warned != tc.warns {
				t.Fatalf("warned %v, want %v:\n%s", warned, tc.warns, log)
			}
		})
	}
}
