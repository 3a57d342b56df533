// Package storetest owns the contract every limiter.Store passes, as tests
// a store's package runs:
//
//   - Run: the semantics of budgets (an exact sliding log, all or nothing),
//     breakers, rate limits, charge-once and costs, then an engine on the
//     store carrying breakers over a reload and resetting them by scope;
//   - Agree: the model-based checks that hold a store against the memory
//     store at one fake clock — random store batches field by field, the
//     bounds of validation, and random valid policies through two engines
//     (no panic, the same decision).
//
// Package limiter runs Run on the memory store; package redisstore runs Run
// and Agree on a real Redis, so both stores are judged from one package.
package storetest
