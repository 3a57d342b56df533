package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/proxy"
)

// tokenScenario: in front-proxy mode a user authenticated by its bearer
// token reaches the API server with that token, which the API server
// authenticates itself; a certificate user is still asserted by the proxy.
func tokenScenario(t *testing.T, cp *framework.ControlPlane, front *runningProxy) {
	whoami := func(t *testing.T, kubeconfig string) string {
		t.Helper()
		out, errOut, err := cp.Kubectl(t, kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
		if err != nil {
			t.Fatalf("kubectl auth whoami: %v: %s", err, errOut)
		}
		return strings.TrimSpace(out)
	}
	t.Run("whoami through the front proxy names the token user and the certificate user", func(t *testing.T) {
		for _, tc := range []struct{ kubeconfig, want string }{
			{kubeconfig: cp.TokenKubeconfig(t, framework.UserAlice), want: framework.UserAlice},
			{kubeconfig: cp.CertKubeconfig(t, "carol"), want: "carol"},
		} {
			if got := whoami(t, viaProxy(t, tc.kubeconfig, front.URL)); got != tc.want {
				t.Errorf("kubectl auth whoami through the proxy = %q, want %q", got, tc.want)
			}
		}
	})
	t.Run("a token user gets what RBAC gives it and no more", func(t *testing.T) {
		kc := viaProxy(t, cp.TokenKubeconfig(t, framework.UserAlice), front.URL)
		// Given alice may edit config maps in proxyNS only
		if _, errOut, err := cp.Kubectl(t, kc, "get", "configmaps", "-n", proxyNS, "-o", "name"); err != nil {
			t.Errorf("kubectl get configmaps -n %s as alice: %v: %s", proxyNS, err, errOut)
		}
		// When she deletes a namespace through the proxy, Then the API server forbids her
		_, errOut, err := cp.Kubectl(t, kc, "delete", "namespace", proxyNS, "--dry-run=server")
		if err == nil || !strings.Contains(errOut, `User "alice" cannot delete resource "namespaces"`) {
			t.Errorf("kubectl delete namespace as alice: err=%v stderr=%q, want forbidden", err, errOut)
		}
	})
	t.Run("a token revoked while the proxy still caches its review fails at the API server", func(t *testing.T) {
		// Given a proxy that caches token reviews for an hour, and a
		// service account token it has already reviewed
		rp := startProxyWith(t, cp, proxy.AuthFrontProxy, "", func(c *proxy.Config) { c.TokenCacheTTL = time.Hour })
		const sa = "revoked-e2e"
		if _, err := cp.Client.CoreV1().ServiceAccounts(proxyNS).Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("failed to create the service account: %v", err)
		}
		tr, err := cp.Client.CoreV1().ServiceAccounts(proxyNS).CreateToken(t.Context(), sa, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("failed to request a token: %v", err)
		}
		direct := &rest.Config{Host: cp.URL, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAFile: cp.CACertFile}}
		review := func(cfg *rest.Config) (*authenticationv1.SelfSubjectReview, error) {
			return framework.ClientFor(t, cfg).AuthenticationV1().SelfSubjectReviews().Create(t.Context(), &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		}
		r, err := review(restVia(direct, rp.URL))
		if err != nil {
			t.Fatalf("SelfSubjectReview through the proxy: %v", err)
		}
		if want := "system:serviceaccount:" + proxyNS + ":" + sa; r.Status.UserInfo.Username != want {
			t.Fatalf("SelfSubjectReview through the proxy names %q, want %q", r.Status.UserInfo.Username, want)
		}
		// When the service account is deleted, and the API server stops accepting its token
		if err := cp.Client.CoreV1().ServiceAccounts(proxyNS).Delete(t.Context(), sa, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("failed to delete the service account: %v", err)
		}
		framework.Eventually(t, time.Minute, "the API server refuses the deleted service account's token", func(context.Context) (bool, error) {
			_, err := review(direct)
			return apierrors.IsUnauthorized(err), nil
		})
		// Then the request through the proxy, which still holds its review, is refused too
		if _, err := review(restVia(direct, rp.URL)); !apierrors.IsUnauthorized(err) {
			t.Errorf("SelfSubjectReview through the proxy with a revoked token: err=%v, want 401 from the API server", err)
		}
	})
}
