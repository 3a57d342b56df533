package cascade

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Propagation returns the propagation the API server applies to a delete of
// a workload of kind with opts (nil when the request has no body): the
// explicit propagationPolicy, else the deprecated orphanDependents, else the
// kind's default. Admission sees the options as sent, before the registry
// fills in its default, so the webhook must resolve it here.
//
// The defaults were checked against kube-apiserver v1.37 (e2e
// TestCascadeDefaultPropagation): batch/v1 Jobs and v1 ReplicationControllers
// still default to Orphan for backwards compatibility; apps/v1 workloads and
// CronJobs to Background. An object that already carries the "orphan"
// finalizer keeps it when the options say nothing; the webhook, which has
// the old object, can check that with HasOrphanFinalizer.
func Propagation(kind string, opts *metav1.DeleteOptions) metav1.DeletionPropagation {
	if opts != nil {
		if opts.PropagationPolicy != nil {
			return *opts.PropagationPolicy
		}
		if o := opts.OrphanDependents; o != nil { //nolint:staticcheck // deprecated, but the API server still honours it
			if *o {
				return metav1.DeletePropagationOrphan
			}
			return metav1.DeletePropagationBackground
		}
	}
	switch kind {
	case KindJob, KindReplicationController:
		return metav1.DeletePropagationOrphan
	default:
		return metav1.DeletePropagationBackground
	}
}

// HasOrphanFinalizer reports whether finalizers hold the "orphan" finalizer,
// which makes a delete without explicit options orphan the dependents.
func HasOrphanFinalizer(finalizers []string) bool {
	for _, f := range finalizers {
		if f == metav1.FinalizerOrphanDependents {
			return true
		}
	}
	return false
}

// RemovesPods reports whether a delete with propagation p removes the
// workload's pods: Background and Foreground do, Orphan does not.
func RemovesPods(p metav1.DeletionPropagation) bool {
	return p != metav1.DeletePropagationOrphan
}
