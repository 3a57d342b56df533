package cascade

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// Index names on the workload informers.
const (
	byUID           = "uid"
	byControllerUID = "controller-uid"
)

// Kinds of the workloads the counter resolves, as in ownerReferences.
const (
	KindDeployment            = "Deployment"
	KindReplicaSet            = "ReplicaSet"
	KindStatefulSet           = "StatefulSet"
	KindDaemonSet             = "DaemonSet"
	KindReplicationController = "ReplicationController"
	KindJob                   = "Job"
	KindCronJob               = "CronJob"
	KindPod                   = "Pod"
	KindNamespace             = "Namespace"
	KindNode                  = "Node"
)

// stripMeta keeps what the counts read: identity, the controller reference
// and the deletion state.
func stripMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	out := metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		DeletionTimestamp: m.DeletionTimestamp,
	}
	if ref := controllerOf(m.OwnerReferences); ref != nil {
		out.OwnerReferences = []metav1.OwnerReference{{
			APIVersion: ref.APIVersion, Kind: ref.Kind, Name: ref.Name, UID: ref.UID, Controller: ref.Controller,
		}}
	}
	return out
}

// stripObject is the cache.TransformFunc of the workload, node and namespace
// informers. Objects it does not know pass unchanged.
func stripObject(obj any) (any, error) {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return &appsv1.Deployment{ObjectMeta: stripMeta(o.ObjectMeta), Spec: appsv1.DeploymentSpec{Replicas: o.Spec.Replicas}}, nil
	case *appsv1.ReplicaSet:
		return &appsv1.ReplicaSet{ObjectMeta: stripMeta(o.ObjectMeta), Spec: appsv1.ReplicaSetSpec{Replicas: o.Spec.Replicas}}, nil
	case *appsv1.StatefulSet:
		return &appsv1.StatefulSet{ObjectMeta: stripMeta(o.ObjectMeta), Spec: appsv1.StatefulSetSpec{Replicas: o.Spec.Replicas}}, nil
	case *appsv1.DaemonSet:
		return &appsv1.DaemonSet{ObjectMeta: stripMeta(o.ObjectMeta)}, nil
	case *corev1.ReplicationController:
		return &corev1.ReplicationController{ObjectMeta: stripMeta(o.ObjectMeta), Spec: corev1.ReplicationControllerSpec{Replicas: o.Spec.Replicas}}, nil
	case *batchv1.Job:
		return &batchv1.Job{ObjectMeta: stripMeta(o.ObjectMeta)}, nil
	case *batchv1.CronJob:
		return &batchv1.CronJob{ObjectMeta: stripMeta(o.ObjectMeta)}, nil
	case *corev1.Namespace:
		return &corev1.Namespace{ObjectMeta: stripMeta(o.ObjectMeta), Status: corev1.NamespaceStatus{Phase: o.Status.Phase}}, nil
	case *corev1.Node:
		n := &corev1.Node{ObjectMeta: stripMeta(o.ObjectMeta)}
		for _, t := range o.Spec.Taints {
			if t.Effect == corev1.TaintEffectNoExecute {
				n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: t.Key, Value: t.Value, Effect: t.Effect})
			}
		}
		return n, nil
	default:
		return obj, nil
	}
}

var workloadIndexers = cache.Indexers{
	byUID: func(obj any) ([]string, error) {
		m, err := metaOf(obj)
		if err != nil {
			return nil, err
		}
		return []string{string(m.UID)}, nil
	},
	byControllerUID: func(obj any) ([]string, error) {
		m, err := metaOf(obj)
		if err != nil {
			return nil, err
		}
		if ref := controllerOf(m.OwnerReferences); ref != nil {
			return []string{string(ref.UID)}, nil
		}
		return nil, nil
	},
}

func metaOf(obj any) (*metav1.ObjectMeta, error) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if o, ok := obj.(metav1.ObjectMetaAccessor); ok {
		if m, ok := o.GetObjectMeta().(*metav1.ObjectMeta); ok {
			return m, nil
		}
	}
	return nil, fmt.Errorf("failed to read metadata: unexpected type %T", obj)
}

// replicasOf returns spec.replicas of a stripped workload (defaulting to 1 as
// the API server does) and whether the kind has replicas.
func replicasOf(obj any) (int32, bool) {
	var r *int32
	switch o := obj.(type) {
	case *appsv1.Deployment:
		r = o.Spec.Replicas
	case *appsv1.ReplicaSet:
		r = o.Spec.Replicas
	case *appsv1.StatefulSet:
		r = o.Spec.Replicas
	case *corev1.ReplicationController:
		r = o.Spec.Replicas
	default:
		return 0, false
	}
	if r == nil {
		return 1, true
	}
	return *r, true
}
