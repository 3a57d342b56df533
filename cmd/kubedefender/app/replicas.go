package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubedefender/kubedefender/config"
)

// replicaCheckInterval is how often a memory store looks for other replicas:
// a `kubectl scale` is noticed within this time.
const replicaCheckInterval = time.Minute

// memoryReplicaCheck returns the component that warns when this process keeps
// its counters in memory while its workload runs other replicas: each replica
// then counts alone, so every limit is multiplied by the replica count and a
// Manual breaker trips on one replica only. ok is false (nothing to run) with
// a Redis store, without a cluster config, or outside a pod (POD_NAME and
// POD_NAMESPACE, set by the shipped Deployment, are required).
func memoryReplicaCheck(cfg *config.Config, storeMode string) (c component, ok bool) {
	ns, pod := os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME")
	if storeMode != "memory" || cfg.Kube == nil || ns == "" || pod == "" {
		return component{}, false
	}
	client, err := kubernetes.NewForConfig(cfg.Kube)
	if err != nil {
		cfg.Logger.Warn("failed to build a client to look for other replicas", "err", err)
		return component{}, false
	}
	rc := &replicaChecker{client: client, namespace: ns, pod: pod, log: cfg.Logger.With("component", "replicas")}
	return component{"replica-check", func(ctx context.Context) error { rc.run(ctx, replicaCheckInterval); return nil }}, true
}

// replicaChecker reads how many replicas the workload running pod asks for.
type replicaChecker struct {
	client         kubernetes.Interface
	namespace, pod string
	log            *slog.Logger

	warned     int32 // replica count last warned about (0: none)
	checked    bool  // a check has succeeded
	failedOnce bool
}

// run checks at once and then every interval until ctx is done.
func (c *replicaChecker) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		c.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check logs a warning when the workload asks for more than one replica
// (once per count), and an info line at the first check with one replica or
// when it is back to one. A failure to
// read the workload (RBAC, no owner) is logged once, at info: the check is a
// guard rail, not a requirement.
func (c *replicaChecker) check(ctx context.Context) {
	workload, n, err := c.desiredReplicas(ctx)
	if err != nil {
		if !c.failedOnce {
			c.failedOnce = true
			c.log.Info("cannot tell whether other replicas run beside this memory store", "err", err)
		}
		return
	}
	first := !c.checked
	c.checked = true
	switch {
	case n <= 1 && first:
		c.log.Info("one replica: the memory store's counters are the cluster's", "workload", workload, "replicas", n)
	case n > 1 && n != c.warned:
		c.warned = n
		c.log.Warn("other replicas run on a memory store: each counts alone, so every limit is multiplied by the replica count and a Manual breaker trips on one replica only; share the counters through Redis (--redis-url, deploy/redis) or run one replica",
			"workload", workload, "replicas", n)
	case n <= 1 && c.warned != 0:
		c.warned = 0
		c.log.Info("one replica again: the memory store's counters are the cluster's", "workload", workload)
	}
}

// desiredReplicas follows the pod's controller owners: a ReplicaSet owned by a
// Deployment gives the Deployment's spec.replicas (the target, not the pods
// of a rollout in progress); a bare ReplicaSet or a StatefulSet its own.
func (c *replicaChecker) desiredReplicas(ctx context.Context) (workload string, n int32, err error) {
	p, err := c.client.CoreV1().Pods(c.namespace).Get(ctx, c.pod, metav1.GetOptions{})
	if err != nil {
		return "", 0, fmt.Errorf("failed to read pod %s/%s: %w", c.namespace, c.pod, err)
	}
	owner := metav1.GetControllerOf(p)
	if owner == nil {
		return "", 0, fmt.Errorf("pod %s/%s has no controller", c.namespace, c.pod)
	}
	switch owner.Kind {
	case "StatefulSet":
		ss, err := c.client.AppsV1().StatefulSets(c.namespace).Get(ctx, owner.Name, metav1.GetOptions{})
		if err != nil {
			return "", 0, fmt.Errorf("failed to read StatefulSet %s: %w", owner.Name, err)
		}
		return "StatefulSet/" + ss.Name, replicasOf(ss.Spec.Replicas), nil
	case "ReplicaSet":
	default:
		return "", 0, fmt.Errorf("pod %s/%s is run by a %s, not a Deployment", c.namespace, c.pod, owner.Kind)
	}
	rs, err := c.client.AppsV1().ReplicaSets(c.namespace).Get(ctx, owner.Name, metav1.GetOptions{})
	if err != nil {
		return "", 0, fmt.Errorf("failed to read ReplicaSet %s: %w", owner.Name, err)
	}
	dep := metav1.GetControllerOf(rs)
	if dep == nil || dep.Kind != "Deployment" {
		return "ReplicaSet/" + rs.Name, replicasOf(rs.Spec.Replicas), nil
	}
	d, err := c.client.AppsV1().Deployments(c.namespace).Get(ctx, dep.Name, metav1.GetOptions{})
	if err != nil {
		return "", 0, fmt.Errorf("failed to read Deployment %s: %w", dep.Name, err)
	}
	return "Deployment/" + d.Name, replicasOf(d.Spec.Replicas), nil
}

// replicasOf reads a spec.replicas, whose absence means 1.
func replicasOf(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}
