// Package proxy is KubeDefender's reverse proxy in front of kube-apiserver:
// it authenticates clients, keeps their identity headers honest, applies the
// policy's rate limits, early breaker rejects (or budgets, with
// --budgets-at=proxy) and priority levels, and forwards everything else —
// every verb, discovery, OpenAPI, watches, chunked responses and upgraded
// connections (SPDY and WebSocket for exec, attach, port-forward and
// pods/proxy) — to the upstream API server over TLS.
//
// # The chain
//
// A request passes these filters, outermost first (Proxy.Handler builds it,
// in one place):
//
//  1. request state: the state every filter after it shares (who the
//     client is, what the request is, its level, timings) and the response
//     writer that records the response's start; a filter that runs without
//     it is a bug, counted (missing_request_state_total) and a panic under
//     the package's tests;
//  2. instrumentation: requests_total{verb,code} and the latency the proxy adds;
//  3. header hygiene: client-sent X-Remote-* headers are removed before
//     anything else reads the request;
//  4. authentication (see below); 401 in front-proxy mode when it fails;
//  5. request attributes, from k8s.io/apiserver's RequestInfoFactory;
//  6. limits: rate limits and early breaker rejects (or budgets), answered
//     with a Kubernetes Status, 429 and Retry-After;
//  7. priority levels: APF-style fair queuing on k8s.io/apiserver's queue
//     sets; 429 when a queue is full or the wait times out;
//  8. the reverse proxy itself.
//
// Cheap rejections come before queuing so that a rejected request never
// takes a queue slot, and authentication comes before everything that keys
// on the user.
//
// # Authentication and identity
//
// front-proxy mode: the proxy authenticates the client with k8s.io/apiserver's
// delegating authenticator (client certificates against the client CA, bearer
// tokens through a cached TokenReview). A request authenticated by its
// client certificate (even when it also carries a token) has its tokens
// removed and its identity forwarded as X-Remote-User / X-Remote-Group /
// X-Remote-Extra-* over a connection that presents the proxy's front-proxy
// client certificate: the certificate ends at this proxy, so only the proxy
// can vouch for it. A request authenticated by its bearer token (an
// Authorization header or a WebSocket bearer protocol) keeps that token, and
// only it, and goes upstream over a connection with no client certificate:
// the API server verifies the same credential itself (its own token cache),
// its audit log shows the user's own authentication, a token revoked after
// the proxy's cached review still fails there, and it does not pay for a
// front-proxy certificate chain verification on every request. Either way
// the user the limits judged is the user the API server sees. An
// unauthenticated request gets 401 from the proxy,
// except the public health and version paths (/healthz, /livez, /readyz,
// /version), which go upstream anonymously.
//
// passthrough mode: credentials are forwarded untouched. The identity used for
// limits and flows is who the API server will act as, from the same
// authenticator: a request that carries a bearer token (Authorization or a
// WebSocket bearer protocol) is the token's user, through a cached
// TokenReview, and its client certificate is not even looked at — the
// certificate ends at this proxy, the API server only sees the token. A
// request with no token is the verified client certificate's subject. A
// request it cannot authenticate is forwarded anyway (the API server answers
// it) and is limited as system:anonymous. A client certificate cannot cross a TLS-terminating
// proxy, so in passthrough mode a request authenticated only by a client
// certificate is forwarded with X-Remote-* headers over the front-proxy
// connection when a front-proxy certificate is configured, and refused with
// 401 otherwise.
//
// Impersonation: Impersonate-* headers pass through to the API server, which
// authorizes them. Limits and flow distinguishers always use the
// authenticated (impersonating) identity, never the impersonated one: the
// proxy decides before the API server has accepted the impersonation, and a
// client must not be able to move itself into another user's rate-limit key
// or fair-queuing flow by sending a header. (The API server's audit log
// records the impersonation; the proxy does not log it.)
//
// Token reviews: authentication runs before the limits (they key on the
// user), so a client sending many distinct bearer tokens costs one cached
// TokenReview each; the API server's own priority and fairness bounds that
// load, and the proxy's metrics show it as 401s.
//
// # Priority levels
//
// Each non-exempt level of the policy gets a queue set (shuffle sharding,
// queueLengthLimit, fair dispatch between flows); its seats are the policy's
// concurrency split by shares (ceil(concurrency*shares/sum), at least 1).
// Flows are told apart by the flow schema name and the user or namespace
// (ByUser / ByNamespace). Exempt levels never queue. Long-running requests
// (watch, exec, attach, port-forward, proxy, log?follow=true and any upgrade)
// hold their seat only until their response starts. A policy reload
// (Proxy.PreparePolicy, subscribed by serve) reconfigures each level's queue
// set in place (BeginConfigChange, then Complete at commit), so queued
// requests stay queued; a level that does not configure refuses the policy; a level that disappears keeps serving the requests it
// already holds.
//
// A level's seats are counted beside its queue set (seatGate): while
// nothing of the level is in its queue set and a seat is free, a request
// takes the seat at once without entering the queue set, as the queue set
// would have dispatched it at once; from the first request that finds no
// free seat until the queue set is empty again, every request goes through
// the queue set, and those it dispatches take their seats from the gate
// (waiting, within the maximum queue wait, for the seats the fast path still
// holds), so the seats held never exceed the level's.
//
// # Cost
//
// A request with a free seat at its priority level skips the queue set (see
// above) and costs no timer (the queue wait is armed only when a request
// actually waits); the RequestInfo of a method, path and query is read once
// and kept (requestInfoCache); its state
// and response writer are one allocation; identity headers are built once
// per authenticated user; copy buffers are pooled. Responses of long-running
// requests are flushed after every write; other responses when complete, or
// after every write if their length is unknown. BenchmarkChain measures the
// chain in process (ns/op, allocs/op), BenchmarkProxyVersusBareReverseProxy
// end to end against a bare httputil.ReverseProxy, and e2e/perf's
// BenchmarkAPIServerLists (make bench-apiserver) against a real API server.
//
// # Judging what the API server will do
//
// The limits judge a request as the API server will execute it (decide,
// budgetVerb, readDeleteOptions):
//
//   - Rate limits and flow schemas see the request's own verb. Budgets and
//     breakers see the verb admission sees: a patch is an update, and a
//     deletecollection is one delete (unless no budget applies to it as a
//     delete while one names deletecollection: then it stays one). When the
//     two verbs differ the engine is asked twice, rate limits first, each
//     with its own checks; otherwise once, as before.
//   - A server-side apply patch may create: budgets on create judge it as
//     well as budgets on update (budgetVerbs). A create on a subresource
//     other than pods/eviction (exec, attach, portforward, binding, tokens)
//     reaches no budget, as at the webhook.
//   - A DELETE's options (dryRun, propagationPolicy) come from where the API
//     server's handlers read them: the body when it is not empty, decoded
//     with the meta codecs by Content-Type, else the query. `?dryRun=All`
//     with a body `{}` is a real delete; `dryRun: [All]` in the body alone is
//     a dry run. An eviction is a dry run when its query or its Eviction's
//     deleteOptions.dryRun says so. The body is read up to
//     MaxDeleteOptionsBytes, into a buffer that grows with what arrives
//     (never from Content-Length), under a read deadline (408 past it), and
//     forwarded whole; a longer or undecodable body is judged as a real
//     delete (the safe side). propagationPolicy is kept on the request state
//     for the filters that need it.
//   - policy.Exemption, the webhook's own list, exempts from budgets and
//     breakers (never from rate limits or priority levels): kubedefender.io
//     resources, objects in the running policy's breakGlass.namespace,
//     Leases, Events and access or token reviews. So break-glass works through the proxy whatever
//     breaker is open.
//
// # Budgets at the proxy
//
// By default (budgets charged by the webhook) the proxy only rejects early the
// requests whose budget key has an open breaker, charging nothing. With
// BudgetsAtProxy the proxy charges budgets itself, with these blind spots: a
// deletecollection is one request to the proxy, charged one token (the
// webhook charges each item), deletions the API server makes on its own
// (garbage-collector and namespace cascades) never pass through the proxy,
// and a request is charged before the API server has judged it (a 404 or 403
// still takes a token).
//
// # Health
//
// /kubedefender/healthz and /kubedefender/readyz are answered on the proxy
// listener without authentication. Readiness is the upstream's /readyz as
// last probed, at most once per Config.UpstreamHealthInterval however often
// it is asked, so probing the proxy never becomes load on the API server.
// The probe carries the front-proxy identity when there is one (an API
// server may refuse anonymous callers); the answer never carries the
// upstream's error, which is logged.
package proxy
