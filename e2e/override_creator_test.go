package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/override"
)

// TestOverrideRequestedByIsTheAuthenticatedCreator: spec.requestedBy was free
// text, so anyone allowed to break the glass could sign the grant with
// someone else's name. With the shipped CRD file, the API server refuses it.
func TestOverrideRequestedByIsTheAuthenticatedCreator(t *testing.T) {
	// Given the shipped CRD (with its admission policy) and two users allowed to break the glass
	cp := framework.Start(t, framework.Options{Users: []framework.User{{Name: "oncall"}, {Name: "mallory"}}})
	applyBase(t, cp, "namespace.yaml", "crd-override.yaml", "rbac-breakglass.yaml")
	for _, u := range []string{"oncall", "mallory"} {
		if out, errOut, err := cp.Kubectl(t, cp.AdminKubeconfig, "-n", "kubedefender-system", "create", "rolebinding", u+"-breakglass",
			"--clusterrole=kubedefender:breakglass", "--user="+u); err != nil {
			t.Fatalf("rolebinding: %v\n%s%s", err, out, errOut)
		}
	}
	dynFor := func(user string) dynamic.Interface {
		d, err := dynamic.NewForConfig(cp.TokenConfig(t, user))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	oncall, mallory := dynFor("oncall"), dynFor("mallory")
	admin, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	create := func(ctx context.Context, d dynamic.Interface, name, requestedBy string) error {
		now := time.Now().UTC().Truncate(time.Second)
		o := &override.Override{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kubedefender-system"},
			Spec: override.Spec{Budgets: []string{"pod-deletes"}, ExpiresAt: metav1.NewTime(now.Add(10 * time.Minute)), Reason: "INC-7: test", RequestedBy: requestedBy}}
		u, err := o.ToUnstructured()
		if err != nil {
			t.Fatal(err)
		}
		_, err = d.Resource(override.GVR).Namespace("kubedefender-system").Create(ctx, u, metav1.CreateOptions{})
		return err
	}
	// The API server starts enforcing a new policy within a few seconds.
	n := 0
	framework.Eventually(t, 30*time.Second, "the admission policy to refuse a forged requestedBy", func(ctx context.Context) (bool, error) {
		n++
		err := create(ctx, mallory, fmt.Sprintf("probe-%d", n), "oncall")
		if err == nil {
			_ = admin.Resource(override.GVR).Namespace("kubedefender-system").Delete(ctx, fmt.Sprintf("probe-%d", n), metav1.DeleteOptions{})
		}
		return apierrors.IsForbidden(err) || apierrors.IsInvalid(err), nil
	})
	ctx := context.Background()

	// When mallory signs an override with oncall's name
	err = create(ctx, mallory, "forged", "oncall")
	// Then the API server refuses it and says who she is
	if err == nil || !strings.Contains(err.Error(), "you are authenticated as mallory") {
		t.Fatalf("a forged requestedBy: %v, want it refused", err)
	}

	// When oncall creates one in their own name
	if err := create(ctx, oncall, "honest", "oncall"); err != nil {
		t.Fatalf("an honest requestedBy: %v", err)
	}
	// Then it cannot be rewritten to another name later, even by an admin
	patch := []byte(`{"spec":{"requestedBy":"mallory"}}`)
	if _, err := admin.Resource(override.GVR).Namespace("kubedefender-system").Patch(ctx, "honest", types.MergePatchType, patch, metav1.PatchOptions{}); err == nil ||
		!strings.Contains(err.Error(), "cannot change") {
		t.Fatalf("rewriting requestedBy: %v, want it refused", err)
	}
	// And an update that leaves it alone (KubeDefender's reset annotation) passes
	patch = []byte(`{"metadata":{"annotations":{"` + override.ResetAnnotation + `":"now by r1"}}}`)
	if _, err := admin.Resource(override.GVR).Namespace("kubedefender-system").Patch(ctx, "honest", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("annotating the override: %v", err)
	}

	// And KubeDefender (with the shipped RBAC's rights: admin here) sees that requestedBy is verified
	if got, err := override.CreatorCheck(ctx, admin); got != override.CreatorVerified {
		t.Fatalf("CreatorCheck = %s (%v), want %s", got, err, override.CreatorVerified)
	}
}
