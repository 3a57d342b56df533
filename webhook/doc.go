// Package webhook owns the validating admission webhook that charges delete
// budgets, and the helpers that install it: the ValidatingWebhookConfiguration
// built from a policy (BuildConfiguration) and its TLS listener (NewServer, a
// serving.Server whose serving pair is a reloading serving.CertKey) that
// accepts only callers presenting a client certificate from a reloading CA
// bundle (ClientAuth on a serving.CA).
//
// # Who may call it
//
// An AdmissionReview is a claim: "this user is deleting this object". The
// handler cannot check it, so whoever can post one can charge budgets, trip a
// breaker (a Manual breaker then denies every real delete it covers) and, if
// the charge-once memory trusted any review, mark a real object as already
// charged. With ServerConfig.ClientAuth (serve --webhook-client-ca-file) the
// TLS handshake requires a client certificate chaining to that CA bundle,
// valid now and for client authentication, and, when AllowedNames is set,
// whose common name is listed — the API server's, given to it by an
// AdmissionConfiguration whose WebhookAdmissionConfiguration kubeconfig names
// the pair for the webhook's host. A caller without one fails the handshake:
// no request of its reaches the handler. The checks run in
// tls.Config.VerifyConnection, on every handshake including resumed ones, so
// each refusal is counted by reason and a CA removed from the file stops
// being accepted at once for new connections. Without ClientAuth, serve logs
// a warning at startup saying what is exposed.
//
// # What the API server sends, and how it is judged
//
// The API server POSTs an AdmissionReview (admission.k8s.io/v1) to /validate
// for every request the configuration's rules select. Handler maps it to
// limiter.Attributes:
//
//   - DELETE of any resource is the verb "delete". A deletecollection reaches
//     the webhook as one DELETE per item, so each item is judged and charged
//     on its own.
//   - CREATE of pods/eviction is the verb "evict" on resource "pods".
//   - CREATE and UPDATE of a resource are "create" and "update", so budgets
//     on those verbs work too; an UPDATE of its scale subresource (kubectl
//     scale, the HPA) is an "update" of the resource, as the proxy judges it;
//     other subresources and CONNECT are admitted without being judged.
//   - the user and groups come from userInfo (a service account is the user
//     system:serviceaccount:NS:NAME), dryRun from the request, and for an
//     eviction from the Eviction's deleteOptions.dryRun too (the API server
//     dry-runs the eviction it asks for, kubectl drain --dry-run=server): a
//     dry run is judged (the client sees what would happen) but charges
//     nothing.
//
// A denial carries the Decision's HTTP code (429 window exhausted or Auto
// breaker, 403 Manual breaker, 503 store down with onStoreFailure: Deny), its
// reason, its message (which names the rule, the key, the window and the
// exact break-glass command) and, when waiting helps, details.retryAfterSeconds,
// which the API server turns into a Retry-After header. Note that client-go
// (and so kubectl) retries a 429 that carries Retry-After up to ten times: a
// client hitting a budget without a breaker is slowed to the budget's rate
// rather than failed. A Manual breaker answers 403, which nothing retries.
// Shadow-mode rules that would have denied add warnings (kubectl prints them)
// and the request is allowed.
//
// # One delete, one token
//
// The API server may validate one DELETE several times (the graceful-deletion
// update, the storage delete, and a retry whenever its cached copy of the
// object was stale), each time with a new request UID: against kube-apiserver
// 1.37 a plain pod delete arrives three times. The handler remembers the
// objects whose deletion it charged in the last two minutes, each by its UID
// (oldObject.metadata.uid) and its group, resource, namespace and name, and
// admits repeats without charging them again (result "repeat"). That memory
// is per replica (chargeMemo); the same key goes to the engine as
// Attributes.ChargeOnce, so the shared store recognises a repeat that reaches
// another replica, in the same store call. Only what the engine charged is
// remembered (limiter.Decision.Charged; the store records the key only for an
// admitted, committed batch): a delete that matched no budget, was denied,
// was a dry run or whose decision timed out records nothing, and a review
// carrying a real object's UID under another name or resource marks nothing
// but the object it names. A decision that times out is not remembered
// either: its repeats are judged again (each may wait out the timeout once
// more) rather than let a review that happened to time out make a later
// delete of the object free. A DELETE of an object that already
// has a deletionTimestamp (the kubelet's final delete after a long grace
// period, a delete after finalizers) is admitted free: the request that began
// the deletion was the one charged. Evictions carry no object UID; an
// eviction is charged once per namespace/name (and pod UID, when the Eviction
// is conditioned on one: deleteOptions.preconditions.uid) and charge-once
// period, so the retries of an eviction a PodDisruptionBudget refuses
// (kubectl drain retries every 5 s) take one token, not one each. A pod
// recreated under an evicted pod's name within that period is a repeat too,
// so a repeated eviction still meets the breakers (limiter.CheckBreakers,
// charging nothing): an open breaker denies it like any other.
//
// # Exemptions: what the webhook never charges
//
// Some requests must keep working for an operator to recover, whatever the
// policy says. The handler admits these without asking the engine (they are
// counted with result "exempt"):
//
//   - every resource of the kubedefender.io group (break-glass Overrides:
//     granting, revoking and expiring them must always work);
//   - every object inside KubeDefender's own namespace (Config.Namespace,
//     by default the policy's breakGlass.namespace), so its own pods can be
//     restarted, evicted and redeployed; the namespace object itself is not
//     exempt;
//   - coordination.k8s.io Leases (leader election) and Events (core and
//     events.k8s.io), whose deletion is housekeeping, never a workload loss.
//
// BuildConfiguration also keeps the API server from calling the webhook for
// its own namespace, by default kube-system, and any namespace labelled
// kubedefender.io/exempt=true, with a namespaceSelector.
//
// Budgets on update may charge one request more than once: the API server
// re-validates an update each time it retries on a conflict, and the retries
// carry different old objects, so they cannot be told apart from new updates.
//
// # Latency budget
//
// The API server waits for the webhook up to timeoutSeconds and then applies
// failurePolicy; webhook timeouts add up across a deletecollection or a
// namespace cascade. So a decision never takes longer than
// Config.DecisionTimeout: the engine is asked with a context whose deadline
// is a fraction of it (a Redis store fails fast and the rule's onStoreFailure
// decides), and if the engine still has not answered when DecisionTimeout
// passes the request is admitted with a warning and counted with result
// "timeout" — an unjudged request is the guard's failure, and a guard that
// fails must not block the cluster.
//
// The handler's own work per review is small next to TLS: the review is read
// in one pass by internal/jsonscan, which takes only the fields the webhook
// reads and validates and skips the rest (a DELETE's old object is most of
// the body); whatever it declines or refuses goes to encoding/json, so both
// accept, decode and refuse the same bodies (FuzzDecodeReviewParity). The
// answer is written without reflection, byte for byte as encoding/json
// writes it (FuzzEncodeResponseParity). Decisions run on reused goroutines
// (deciders) so that a request can be answered when its decision times out.
//
// # Metrics
//
// On the injected prometheus.Registerer, namespace kubedefender, subsystem
// webhook:
//
//   - requests_total{operation,result}: operation is the admission operation
//     (CREATE, UPDATE, DELETE, CONNECT, or "" for a request that could not be
//     decoded); result is allowed, denied, shadow (allowed with warnings),
//     exempt, ignored (no budget verb describes it), repeat (a repeated
//     validation of a delete already charged), timeout, bad_request or error
//     (a recovered panic);
//   - request_duration_seconds{operation}: from the body being read to the
//     response being written;
//   - client_certificate_rejections_total{reason}: handshakes refused by
//     ClientAuth: no_certificate, untrusted (another CA, expired, not for
//     client authentication) or name_not_allowed.
//
// The reloads of the serving pair and of the client CA are counted under the
// same subsystem, certificate_reloads_total{result} and
// client_ca_reloads_total{result} (success or failure), but not by this
// package: serving.CertKey and serving.CA register them, given subsystem
// "webhook" by the command that builds them (cmd/kubedefender/app/serve.go).
package webhook
