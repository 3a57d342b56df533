// Package redisstore owns the Redis implementation of limiter.Store: the
// store every replica shares through Redis (single node, Sentinel or
// Cluster), its Lua scripts (lua.go: budget.go and the rate buckets of
// package limiter, line by line), the breaker around Redis (breaker.go), the
// status reads (status.go) and the --redis-url forms (url.go).
//
// Every decision is one script call, one round trip; the store fails fast
// with limiter.ErrStoreUnavailable when Redis cannot answer, and the engine
// then follows each rule's onStoreFailure. Its tests hold it against the
// memory store through package storetest.
package redisstore
