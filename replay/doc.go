// Package replay tries a policy against the cluster's own past: it reads
// kube-apiserver audit logs and judges every request with the limiter's own
// engine, as if KubeDefender had stood in front of the API server then.
//
// # Input
//
// Audit logs as kube-apiserver writes them with --audit-log-path (one
// audit.k8s.io/v1 Event per JSON line), rotated files compressed with gzip,
// stdin ("-"), and the webhook backend's EventList batches (one list per
// line). A line that is not an event is reported with its file:line,
// counted and skipped.
//
// One request is one auditID: the stages of a request (RequestReceived,
// ResponseStarted, ResponseComplete, Panic) merge into one request, which is
// judged once, with the status code of its ResponseComplete. Requests are
// replayed in requestReceivedTimestamp order across all files: the files
// are merged by stageTimestamp (the order the API server writes them in)
// and pass through a reorder buffer, a min-heap by requestReceivedTimestamp
// that releases a request once the log has moved Delay (5s) past its
// receipt and its ResponseComplete was seen, or MaxWait (1m) past it
// without one (a watch ends long after it starts). An event more out of
// order than that is counted as late and not replayed. Memory is bounded by
// the requests in the buffer and the keys the rules count, never by the
// size of the log.
//
// # The model
//
// Two limiter engines judge each request, on memory stores driven by one
// simulated clock set to the request's requestReceivedTimestamp: the
// policy's own engine, which denies and trips breakers as production would
// (Shadow rules count what they would deny), and a demand engine with the
// same rules, no breakers and limits out of reach, whose windows hold what
// each key asked for had nothing been denied. The report's denials and
// trips come from the first, its peaks (and so --suggest) from the second.
// A store wrapper sees every check the engines make with its result.
//
// Rate limits and flow schemas are judged as the proxy judges them: on the
// request's own verb (a create on pods/eviction is evict), with the
// User-Agent, user and groups of the event (the impersonated user when
// there is one); a request the API server could not authenticate (401) is
// not charged, as the proxy authenticates first. The replay assumes every
// request went through the proxy.
//
// Budgets are judged as the webhook judges them: a delete is a delete, a
// deletecollection is one delete per item of its response body when the
// log has it (audit level RequestResponse) and one delete otherwise (the
// report counts both), a create on pods/eviction is evict, other creates
// are create, an update or a patch (of the object, not a subresource) is
// update. policy.Exemption exempts what it exempts in the webhook. A
// request the API server refused before admission is not judged by
// budgets: 401, 404, and 400, 403, 405, 406, 413, 415, 422 or 429 whose
// message does not say an admission webhook denied it (a 403 whose
// authorization decision annotation is "forbid" never is); namespaces
// exempted by the kubedefender.io/exempt label are not known to the log and
// are judged.
//
// The webhook charges one object's deletion once: the API server may call it
// up to three times for one DELETE (one audit event, so one judgment here),
// and the kubelet's final delete of a terminating pod is free. The log does
// not carry the object's UID or deletionTimestamp, so replay charges a
// delete of one object (group, resource, namespace, name) once per
// ChargeOnceTTL (10m): a second delete of the same object within it is free,
// as the kubelet's final delete is. An eviction is charged once per
// ChargeOnceTTL, as in the webhook. Denied requests charge nothing, so a
// retry after a denial is judged again.
//
// Requests the live proxy denied never reached the API server and are not
// in the log: to compare a replay with what a live proxy did, run its rate
// limits in Shadow mode, which counts would-be denials and lets requests
// through.
//
// # Suggest
//
// Report.Suggest keeps the input policy's rules, keys and windows and sets
// each budget window's limit to the busiest key's peak in that window times
// a headroom, rounded up to 1, 2 or 5 × 10^n, and each rate limit's qps and
// burst to the busiest key's most requests within any one second, the same
// way. Replayed against the same log it denies nothing (see Suggest).
package replay
