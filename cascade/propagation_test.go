package cascade

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestPropagation(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind string
		opts *metav1.DeleteOptions
		want metav1.DeletionPropagation
	}{
		{name: "a Deployment delete without a body is Background", kind: KindDeployment, want: metav1.DeletePropagationBackground},
		{name: "a StatefulSet delete with empty options is Background", kind: KindStatefulSet, opts: &metav1.DeleteOptions{}, want: metav1.DeletePropagationBackground},
		{name: "a CronJob delete defaults to Background", kind: KindCronJob, want: metav1.DeletePropagationBackground},
		{name: "a batch/v1 Job delete defaults to Orphan", kind: KindJob, want: metav1.DeletePropagationOrphan},
		{name: "a ReplicationController delete defaults to Orphan", kind: KindReplicationController, want: metav1.DeletePropagationOrphan},
		{name: "an explicit policy wins over the default", kind: KindJob, opts: &metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)}, want: metav1.DeletePropagationBackground},
		{name: "an explicit Foreground is kept", kind: KindDeployment, opts: &metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationForeground)}, want: metav1.DeletePropagationForeground},
		{name: "orphanDependents true is Orphan", kind: KindDeployment, opts: &metav1.DeleteOptions{OrphanDependents: ptr.To(true)}, want: metav1.DeletePropagationOrphan},                      //nolint:staticcheck // deprecated, but the API server still honours it
		{name: "orphanDependents false is Background", kind: KindReplicationController, opts: &metav1.DeleteOptions{OrphanDependents: ptr.To(false)}, want: metav1.DeletePropagationBackground}, //nolint:staticcheck // deprecated, but the API server still honours it
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Propagation(tc.kind, tc.opts)
			if got != tc.want {
				t.Errorf("Propagation(%s) = %s, want %s", tc.kind, got, tc.want)
			}
			if RemovesPods(got) != (tc.want != metav1.DeletePropagationOrphan) {
				t.Errorf("RemovesPods(%s) = %v", got, RemovesPods(got))
			}
		})
	}
	if !HasOrphanFinalizer([]string{"x", metav1.FinalizerOrphanDependents}) || HasOrphanFinalizer([]string{metav1.FinalizerDeleteDependents}) {
		t.Error("HasOrphanFinalizer does not recognise the orphan finalizer")
	}
}
