// Package cascade answers, before a request is admitted, how many pods (and
// other namespaced objects) a root request will remove, and whether a later
// delete is a follow-up of a root that was already charged. It is the
// counting half of the AtRoot blast-radius budgets (issue 11); the decision
// half (charging tokens, denying, breakers) lives in limiter/ and webhook/.
//
// # Roots and follow-ups
//
// A root is the topmost object a client changed. For each root the counter
// answers what it will remove:
//
//	root                                              counted
//	DELETE namespace                                  its pods (PodsInNamespace), and for
//	                                                  other budgets its objects of a
//	                                                  resource (ObjectsInNamespace)
//	DELETE Deployment, ReplicaSet, StatefulSet,       the pods it controls through the
//	  DaemonSet, ReplicationController, Job, CronJob  controller ownerReference chain
//	                                                  (PodsOwnedBy); Deployment resolves
//	                                                  through ReplicaSets, CronJob through
//	                                                  Jobs. Orphan removes nothing: the
//	                                                  caller resolves the propagation with
//	                                                  Propagation (Jobs and RCs still
//	                                                  default to Orphan) and asks only
//	                                                  when RemovesPods.
//	scale-down of a Deployment, ReplicaSet,           old minus new replicas (ScaleDown),
//	  StatefulSet, ReplicationController or scale     never below zero; a rollout (same
//	                                                  replicas, new template) is not one
//	DELETE Node                                       the pods bound to it (PodsOnNode)
//	NoExecute taint added to a Node                   its pods that do not tolerate it
//	                                                  forever (PodsEvictedByTaints of
//	                                                  AddedNoExecuteTaints(old, new))
//	DELETE/evict one pod                              one, as today (nothing to ask here)
//
// Pods that already carry a deletionTimestamp are never counted: they are on
// their way out and were charged (or were a follow-up) when their delete began.
//
// Everything the controllers do below a root is a follow-up and free. The
// webhook records every charged root with RecordRoot and asks FollowUp for
// each later pod delete or eviction, and for each workload delete or
// ReplicaSet scale. A request is a follow-up when the object is already
// doomed:
//
//   - its namespace is Terminating (or a charged namespace delete was recorded
//     and the watch has not shown the phase yet);
//   - the object is already being deleted (deletionTimestamp set);
//   - an owner in its controller chain is being deleted (deletionTimestamp,
//     Foreground propagation) or was deleted by a charged root (Background
//     propagation: the owner is gone from the cache, so the recorded root
//     remembers the UIDs of the ReplicaSets and Jobs it resolved through);
//   - an owner in its chain was scaled down by a charged root: the root leaves
//     a credit of as many pods as it paid for, and each follow-up pod delete
//     under that owner spends one, so a charged 10→9 does not make a hundred
//     hand-made deletes free;
//   - its ReplicaSet, StatefulSet or ReplicationController has more live pods
//     than spec.replicas: its controller is deleting the surplus, after a
//     charged scale-down or in a Deployment rollout (which maxUnavailable
//     governs, not a budget). This frees at most the surplus, plus what the
//     watch has not shown deleted yet;
//   - a ReplicaSet scale whose controller is a Deployment: the Deployment
//     controller scales it (a charged scale-down or a rollout governed by
//     maxUnavailable);
//   - its node is gone (pod GC removes pods of vanished nodes) or carries a
//     NoExecute taint recorded by a charged root that the pod does not
//     tolerate forever.
//
// Who asks does not matter: a doomed pod costs nothing more when a person
// deletes it by hand, and a pod that is not doomed is charged whoever deletes
// it, controllers included.
//
// The memory of charged roots is small and bounded: at most Config.MaxRoots
// entries, each forgotten after Config.RootTTL. A follow-up that arrives after
// its root was forgotten is charged like any other delete, which is safe (too
// strict, never too lenient) and only happens when controllers lag by more
// than the TTL.
//
// # Staleness
//
// Counts come from watches and are as fresh as the watch: a pod created a
// moment before a namespace delete may not be counted, and one deleted a
// moment before may still be. The error is bounded by the watch delay
// (normally well under a second) and the next root is counted afresh. Until
// every watch has listed once HasSynced is false, /readyz should report not
// ready, and AtRoot budgets must judge as PerObject (and log that they do):
// a count from a half-filled cache would under-charge.
//
// # Limits (for the wiring)
//
//   - StatefulSet and DaemonSet rolling updates delete pods while the
//     workload is at its replicas (to recreate them); FollowUp does not
//     recognise these, so they would be charged as pod deletes. Until it
//     does (pod revision against status.updateRevision), keep the exclusions
//     of those two controllers.
//   - Controllers also make roots of their own: the CronJob controller
//     deletes old Jobs beyond its history limits, the TTL-after-finished
//     controller deletes finished Jobs. They are counted like anyone's
//     (their pods are usually Succeeded or Failed, still pods).
//   - A dependent whose owner left the cache without a recorded root (the
//     owner was deleted while budgets judged PerObject, or before a restart)
//     is not a follow-up: absence from a watch cache is not proof of deletion.
//
// # Memory
//
// Pods are the only resource that reaches the hundreds of thousands, so they
// do not go through an informer's indexer (a stripped *corev1.Pod is still a
// struct of more than a kilobyte). A reflector feeds a compact store that keeps,
// per pod, its name, UID (16 bytes), interned pointers to its namespace,
// controller owner, node and NoExecute tolerations, and two slice positions
// that make the owner and node indexes O(1) to update. Counting a namespace is
// a length lookup; counting an owner's or a node's pods walks only those pods.
// Workloads, nodes and namespaces go through a SharedInformerFactory whose
// transform strips them to the metadata and replicas the counts read. Other
// resources counted for namespace deletes use metadata-only watches started
// on demand, holding only a per-namespace set of names.
package cascade
