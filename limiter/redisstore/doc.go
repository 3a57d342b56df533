// Package redisstore owns the Redis implementation of limiter.Store: the
// store every replica shares through Redis (single node, Sentinel or
// Cluster), its Lua scripts (budgetlua.go: limiter/budget.go line by line;
// lua.go: the rate buckets of package limiter, breaker carrying,
// heartbeats), the sharing of script calls by concurrent budget decisions
// (coalesce.go), the breaker around Redis (breaker.go), the status reads
// (status.go) and the --redis-url forms (url.go).
//
// Every decision is at most one script call, one round trip (under load
// budget decisions share one); the store fails fast
// with limiter.ErrStoreUnavailable when Redis cannot answer, and the engine
// then follows each rule's onStoreFailure. Its tests hold it against the
// memory store through package storetest.
package redisstore
