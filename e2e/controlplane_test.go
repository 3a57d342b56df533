package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kubedefender/kubedefender/e2e/framework"
)

// TestControlPlaneSmoke proves the harness: a real API server with RBAC and
// static tokens, kubectl against it, and a controller manager whose garbage
// collector and namespace controller cascade deletions.
func TestControlPlaneSmoke(t *testing.T) {
	// Given a control plane with a controller manager
	began := time.Now()
	cp := framework.Start(t, framework.Options{ControllerManager: true, AuditLog: true})
	t.Logf("startup took %s", time.Since(began).Round(time.Millisecond))
	ctx := t.Context()
	c := cp.Client

	t.Run("the API server reports the pinned version", func(t *testing.T) {
		v, err := c.Discovery().ServerVersion()
		if err != nil {
			t.Fatalf("failed to get the server version: %v", err)
		}
		if v.GitVersion != "v1.37.2" {
			t.Errorf("server version = %q, want v1.37.2", v.GitVersion)
		}
	})

	// Given a namespace with three pods
	const ns = "smoke"
	cp.CreateNamespace(t, ns)
	want := []string{"pod-a", "pod-b", "pod-c"}
	for _, name := range want {
		if _, err := c.CoreV1().Pods(ns).Create(ctx, pod(name, nil), metav1.CreateOptions{}); err != nil {
			t.Fatalf("failed to create pod %s: %v", name, err)
		}
	}

	t.Run("client-go lists the pods", func(t *testing.T) {
		pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("failed to list pods: %v", err)
		}
		var got []string
		for _, p := range pods.Items {
			got = append(got, p.Name)
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("pods = %v, want %v", got, want)
		}
	})

	t.Run("kubectl with the admin kubeconfig lists the pods", func(t *testing.T) {
		out, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, "get", "pods", "-n", ns, "-o", "name")
		if err != nil {
			t.Fatalf("%v: %s", err, errOut)
		}
		if got, wantOut := strings.Fields(out), []string{"pod/pod-a", "pod/pod-b", "pod/pod-c"}; strings.Join(got, ",") != strings.Join(wantOut, ",") {
			t.Errorf("kubectl printed %q, want %v", out, wantOut)
		}
	})

	t.Run("a token user without RBAC grants is forbidden", func(t *testing.T) {
		_, errOut, err := cp.Kubectl(t, cp.TokenKubeconfig(t, framework.UserAlice), "get", "pods", "-n", ns)
		if err == nil || !strings.Contains(errOut, `User "alice" cannot list resource "pods"`) {
			t.Errorf("kubectl as alice: err=%v stderr=%q, want a Forbidden for alice", err, errOut)
		}
		_, err = framework.ClientFor(t, cp.TokenConfig(t, framework.UserBob)).CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("client-go as bob: err=%v, want Forbidden", err)
		}
	})

	t.Run("the API server takes identity headers only from the front-proxy client", func(t *testing.T) {
		listPodsAs := func(certFile, keyFile string) int {
			client := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS(t, cp.CACertFile, certFile, keyFile)}}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, cp.URL+"/api/v1/namespaces/"+ns+"/pods", nil)
			if err != nil {
				t.Fatalf("failed to build request: %v", err)
			}
			req.Header.Set("X-Remote-User", "carol")
			req.Header.Set("X-Remote-Group", "system:masters")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("failed to list pods: %v", err)
			}
			_ = resp.Body.Close()
			return resp.StatusCode
		}
		// Given the front-proxy client certificate, the headers name the user
		if code := listPodsAs(cp.FrontProxyClientCertFile, cp.FrontProxyClientKeyFile); code != http.StatusOK {
			t.Errorf("as front-proxy-client claiming carol in system:masters: status %d, want 200", code)
		}
		// Given any other client certificate, the headers are ignored
		cert, key := cp.IssueClientCert(t, "mallory")
		if code := listPodsAs(cert, key); code != http.StatusForbidden {
			t.Errorf("as mallory claiming carol in system:masters: status %d, want 403", code)
		}
	})

	t.Run("the garbage collector deletes what a deleted Deployment owned", func(t *testing.T) {
		// Given a Deployment whose controllers made a ReplicaSet and two pods
		createWebDeployment(t, c, ns, 2)
		webPods := func(ctx context.Context) (int, error) {
			l, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				return 0, err
			}
			return len(l.Items), nil
		}
		framework.Eventually(t, 20*time.Second, "the Deployment's two pods", func(ctx context.Context) (bool, error) {
			n, err := webPods(ctx)
			return n == 2, err
		})

		// When the Deployment is deleted in the background
		if err := c.AppsV1().Deployments(ns).Delete(ctx, "web", metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)}); err != nil {
			t.Fatalf("failed to delete deployment: %v", err)
		}

		// Then the garbage collector removes its ReplicaSet and their pods
		framework.Eventually(t, 30*time.Second, "the ReplicaSet and pods to be collected", func(ctx context.Context) (bool, error) {
			rs, err := c.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			n, err := webPods(ctx)
			return len(rs.Items) == 0 && n == 0, err
		})

		// And the deletions were made by the garbage collector's own service account
		const gc = "system:serviceaccount:kube-system:generic-garbage-collector"
		framework.Eventually(t, 10*time.Second, "audit events of the collector deleting the ReplicaSet and pods", func(context.Context) (bool, error) {
			deleted := map[string]int{}
			for _, e := range cp.ReadAuditEvents(t) {
				if e.Verb == "delete" && e.Stage == "ResponseComplete" && e.User.Username == gc && e.ObjectRef != nil && e.ObjectRef.Namespace == ns {
					deleted[e.ObjectRef.Resource]++
				}
			}
			return deleted["replicasets"] == 1 && deleted["pods"] == 2, fmt.Errorf("deletes by %s: %v", gc, deleted)
		})
	})

	t.Run("a deleted namespace is finalized and its pods are gone", func(t *testing.T) {
		// When the namespace is deleted
		if err := c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("failed to delete namespace: %v", err)
		}
		// Then the namespace controller empties and finalizes it
		framework.Eventually(t, 30*time.Second, "namespace "+ns+" to disappear", func(ctx context.Context) (bool, error) {
			_, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, nil
			}
			return false, err
		})
	})
}

func pod(name string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
			TerminationGracePeriodSeconds: ptr.To[int64](0),
		},
	}
}

// createWebDeployment creates Deployment web in ns: replicas pods labelled
// app=web, of the spec pod gives.
func createWebDeployment(t *testing.T, c kubernetes.Interface, ns string, replicas int32) {
	t.Helper()
	labels := map[string]string{"app": "web"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: pod("", nil).Spec},
		},
	}
	if _, err := c.AppsV1().Deployments(ns).Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("failed to create the deployment: %v", err)
	}
}
