package limiter

import (
	"context"
	"errors"
	"time"

	"github.com/kubedefender/kubedefender/policy"
)

// Sentinel errors, carried by denied Decisions (Decision.Err) and checked with errors.Is.
var (
	// ErrBudgetExhausted: a window of a budget had no room.
	ErrBudgetExhausted = errors.New("budget exhausted")
	// ErrBreakerOpen: the budget key's breaker is open (or half-open and out of probes).
	ErrBreakerOpen = errors.New("breaker open")
	// ErrRateLimited: a rate limit's bucket was empty.
	ErrRateLimited = errors.New("rate limited")
	// ErrStoreUnavailable: the shared store could not be reached. Stores return
	// it (wrapped) when they fail fast; rules then follow onStoreFailure.
	ErrStoreUnavailable = errors.New("store unavailable")
	// ErrEngineFailure: the engine failed on a rule (a panic, or a rule the
	// stores cannot run) and the rule's onStoreFailure is Deny.
	ErrEngineFailure = errors.New("engine failure")
)

// Store keeps the counters behind budgets, breakers and rate limits. One
// Budgets or Rates call is one decision: a Redis implementation makes at most
// one round trip for it (decisions may share one).
// Every method is part of the contract (a store that has nothing to do for
// one says why and returns): the engine never asks a store what it is.
//
// Keys passed in checks (BudgetCheck.Key, RateCheck.Key) are valid only during
// the call: a store that keeps a key must copy it.
type Store interface {
	// Budgets judges one request against every budget it matched, all or
	// nothing: when every non-shadow check is allowed and b.Commit is set,
	// Cost tokens (one by default) are taken from every window of every
	// allowed check; otherwise
	// nothing is taken. Breakers move as the package doc describes; with Commit
	// unset (dry run) nothing changes at all. Results has one entry per check.
	Budgets(ctx context.Context, b *BudgetBatch) error
	// Rates charges one request to each rate limit it matched, in order,
	// stopping at the first non-shadow denial.
	Rates(ctx context.Context, b *RateBatch) error
	// ResetBudget closes the breaker of a budget key and clears its windows.
	// Key AllKeys resets every key of the budget.
	ResetBudget(ctx context.Context, spec *BudgetSpec, key string) error
	// ResetBudgetKeys resets, as ResetBudget, every key of spec for which
	// match is true, and returns them: an override scoped to some namespaces
	// of a per [namespace, user] budget.
	ResetBudgetKeys(ctx context.Context, spec *BudgetSpec, match func(key string) bool) ([]string, error)
	// CarryBreakers gives every key of from whose breaker is Open at now a
	// key of to, Open since the same time, with empty windows (unless to
	// already has that key), and returns the keys carried. A reload that
	// changes a budget's windows (so its store ID) calls it before the swap.
	CarryBreakers(ctx context.Context, from, to *BudgetSpec) ([]string, error)
	// Retain is called after every reload with the IDs of every rule the
	// engine now runs (local shares included) and the budget specs by ID: a
	// store forgets the state of rules not listed and judges the kept ones
	// with the new specs from now on.
	Retain(ids map[string]bool, budgets map[string]*BudgetSpec)
	Inspector
}

// AllKeys names every key of a rule in ResetBudget.
const AllKeys = "*"

// BudgetBatch is one request's budget checks and their results.
type BudgetBatch struct {
	Checks  []BudgetCheck
	Results []BudgetResult // the store sets len(Results) == len(Checks)
	// Commit takes tokens and moves breakers; false judges only (dryRun, or the
	// proxy's early breaker check).
	Commit bool
	// Once, when set on a committed batch, identifies what is being charged
	// (e.g. the UID of the object being deleted): a batch with the same Once
	// within OnceTTL of an admitted one is a repeat — admitted, judged and
	// charged by nobody, on every replica sharing the store. The API server
	// validates one DELETE up to three times.
	Once    string
	OnceTTL time.Duration
	// Admitted is set by the store: every non-shadow check was allowed.
	Admitted bool
	// Repeat is set by the store: the batch's Once was already charged, so
	// nothing was judged; every result is allowed.
	Repeat bool
	// Now is set by the store: the time the decision was made at.
	Now time.Time
}

// Reset empties the batch for reuse, keeping its capacity.
func (b *BudgetBatch) Reset() {
	b.Checks = b.Checks[:0]
	b.Results = b.Results[:0]
	b.Commit = false
	b.Once, b.OnceTTL = "", 0
	b.Admitted, b.Repeat = false, false
	b.Now = time.Time{}
}

// BudgetCheck is one budget a request matched.
type BudgetCheck struct {
	Spec *BudgetSpec
	// Key is the budget key, e.g. "namespace=prod"; "" for a cluster-wide budget.
	Key string
	// Shadow checks are judged and charged when they have room but never deny.
	Shadow bool
	// Cost is how many tokens the check takes from every window of the key
	// (a cascades: AtRoot budget charges one per object a root removes); 0
	// means 1. A check is allowed when every window has Cost tokens left, so
	// a Cost above a window's limit, or above MaxCost, is always denied (and
	// trips the breaker).
	Cost int64
}

// MaxCost is the most tokens one check can take. Stores keep one entry per
// token taken, and Redis runs a script alone: writing 16384 entries takes
// about 20ms of Redis time (a million took 2s, far past the 100ms decision
// timeout), so a larger cost is denied, whatever the limits, rather than
// written. Only an override lets a larger root through.
const MaxCost = 1 << 14

// Tokens is the tokens the check takes: Cost, at least 1.
func (c *BudgetCheck) Tokens() int64 {
	if c.Cost < 1 {
		return 1
	}
	return c.Cost
}

// BreakerState is the state of one budget key's breaker.
type BreakerState uint8

// Breaker states.
const (
	Closed BreakerState = iota
	Open
	HalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case Open:
		return "Open"
	case HalfOpen:
		return "HalfOpen"
	}
	return "Closed"
}

// DenyReason says why a check was not allowed.
type DenyReason uint8

// Deny reasons.
const (
	NotDenied DenyReason = iota
	// WindowExhausted: a window had no room.
	WindowExhausted
	// BreakerIsOpen: the breaker was already open.
	BreakerIsOpen
	// HalfOpenFull: the breaker is half-open and has admitted halfOpenLimit requests.
	HalfOpenFull
)

// MaxWindows is the most windows a budget may have: validation refuses more
// (policy.MaxWindows), and BudgetResult has room for exactly this many.
const MaxWindows = policy.MaxWindows

// BudgetResult is the outcome of one BudgetCheck.
type BudgetResult struct {
	Allowed bool
	Reason  DenyReason
	// Window is the index of the window that denied (the one that frees up
	// last), or -1.
	Window int
	// Used holds each window's count, including this request when it was
	// allowed and committed.
	Used [MaxWindows]int64
	// RetryAfter is when asking again can succeed: the window frees up, or an
	// Auto breaker moves on. Zero for a Manual breaker.
	RetryAfter time.Duration
	// Prev and State are the breaker state before and after this request.
	Prev, State BreakerState
	// Since is when State was entered.
	Since time.Time
}

// RateBatch is one request's rate-limit checks and their results.
type RateBatch struct {
	Checks  []RateCheck
	Results []RateResult
	Now     time.Time
}

// Reset empties the batch for reuse.
func (b *RateBatch) Reset() {
	b.Checks = b.Checks[:0]
	b.Results = b.Results[:0]
	b.Now = time.Time{}
}

// RateCheck is one rate limit a request matched.
type RateCheck struct {
	Spec   *RateSpec
	Key    string
	Shadow bool
}

// RateResult is the outcome of one RateCheck. Checks after the first
// non-shadow denial are not charged and report Skipped.
type RateResult struct {
	Allowed    bool
	Skipped    bool
	RetryAfter time.Duration
}
