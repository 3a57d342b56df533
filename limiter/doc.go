// Package limiter owns the decision engine: multi-window budgets, their circuit
// breakers, rate limits, overrides, the Store contract that keeps their
// counters, and the memory store. The Redis store is package redisstore;
// the tests every store passes are package storetest.
//
// # Budgets: an exact sliding log
//
// A budget key keeps the times of the requests it admitted, newest last, for as
// long as its longest window. A request is admitted when, for every window of
// length W and limit L, fewer than L admissions lie in (now-W, now]; then its
// time is appended once, which takes one token from every window together. So
// for any half-open span [s, s+W) of any alignment at most L admissions fall
// inside: there is no double burst at a window boundary. A denied request
// appends nothing. Memory per key is bounded by the longest window's limit
// (windows may not shrink in limit as they grow in length) and an idle key is
// forgotten. A window frees up when its L-th newest admission leaves it; that
// time is the Retry-After.
//
// # Breakers
//
// Each budget key with a breaker is Closed, Open or HalfOpen. Closed → Open
// when a request finds a window exhausted (that request is denied). Open
// denies everything the budget matches. Manual recovery stays Open until an
// override resets it. Auto recovery moves Open → HalfOpen after cooldown;
// HalfOpen admits at most halfOpenLimit requests (still within the windows)
// and moves → Closed after a further cooldown without exhaustion; exhaustion
// while HalfOpen → Open again. Time-driven transitions are applied lazily when
// a key is next judged, so a breaker needs no timer.
//
// # Rate limits
//
// A token bucket per key, kept as GCRA: one theoretical arrival time per key.
// A rule keeps a bounded number of keys (32 shards, each with an overflow
// bucket that new keys of a full shard share); a key stays for RateKeyIdle
// after its bucket refilled, so clients that keep asking keep their bucket
// however many new keys (user agents) a flood brings.
//
// # Never the outage
//
// Validation bounds every number (policy/bounds.go) so that both stores run
// every valid policy exactly and alike; a property test checks it on random
// valid policies against the memory store and a real Redis (storetest.Agree).
// Should a decision still panic, each rule the request matched follows its
// onStoreFailure (guard.go), counted and logged once per policy.
//
// # One decision, one store call
//
// Engine.Decide matches the request against the compiled policy, builds the
// keys in a pooled arena and hands all budget checks to Store.Budgets in one
// call, which judges them all or nothing (and all rate-limit checks to
// Store.Rates in one call), so a Redis store can make a whole decision in one
// round trip. Shadow rules are judged and charged but never deny; dry-run
// requests are judged and charge nothing. When the store fails, each rule
// follows its onStoreFailure: Allow, Deny, or Local (a memory store with this
// replica's share of every limit).
//
// # Reload and logs
//
// A reload has two phases (reload.go): PreparePolicy builds the new rules to
// the side and its commit swaps them in and cannot fail, so the policy
// watcher can refuse a policy any subscriber cannot take before anything
// changes. Denials are logged once per (rule, key) per 10 seconds, the rest
// counted into one summary line (denylog.go), so a storm of denied requests
// is not a storm of log lines.
package limiter
