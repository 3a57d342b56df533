// Package override owns break-glass overrides: the Override custom resource
// (kubedefender.io/v1alpha1, namespaced, in the policy's breakGlass.namespace),
// its checks against the policy, the controller that every replica runs to
// apply overrides to its engine, and the client calls behind
// `kubedefender breakglass grant|list|revoke`.
//
// An override is applied when its reason is present, its expiresAt lies at most
// breakGlass.maxDuration after its creation, and it names at least one rule the
// running policy has (or "*"). The controller watches Overrides with an
// informer, re-checks expiry every second, and on each change hands the active
// set to the engine. Activation, rejection, revocation and expiry are logged,
// counted, and emitted as Kubernetes Events on the Override; an override with
// resetBreaker closes its breakers and clears their counters when it activates.
package override
