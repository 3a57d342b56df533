package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kubedefender/kubedefender/limiter"
)

var _ limiter.Inspector = (*RedisStore)(nil)

// InspectBudget implements Inspector: it SCANs the node holding the {b} slot
// for the rule's keys and judges them, without charging, through the budget
// script, a hundred keys per call. Status only; never on a request path.
func (s *RedisStore) InspectBudget(ctx context.Context, spec *limiter.BudgetSpec, limit int) ([]limiter.BudgetKeyStatus, error) {
	node, err := s.budgetNode(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to inspect budget %s: %w", spec.Name, err)
	}
	keys, err := budgetKeyNames(ctx, node, s.budgetBase(spec), s.timeout)
	if err != nil {
		return nil, fmt.Errorf("failed to inspect budget %s: %w", spec.Name, err)
	}
	var out []limiter.BudgetKeyStatus
	for start := 0; start < len(keys); start += 100 {
		end := min(start+100, len(keys))
		b := &limiter.BudgetBatch{}
		for _, k := range keys[start:end] {
			b.Checks = append(b.Checks, limiter.BudgetCheck{Spec: spec, Key: k})
		}
		if err := s.Budgets(ctx, b); err != nil {
			return nil, fmt.Errorf("failed to inspect budget %s: %w", spec.Name, err)
		}
		for i := range b.Results {
			res := &b.Results[i]
			ks := limiter.BudgetKeyStatus{Key: b.Checks[i].Key, Used: res.Used, State: res.State, Since: res.Since}
			if res.Reason == limiter.WindowExhausted {
				// judge reports the trip this request would cause; the key is not Open yet.
				ks.State, ks.Since = limiter.Closed, time.Time{}
				if res.Prev == limiter.HalfOpen {
					ks.State = limiter.HalfOpen
				}
				if !spec.Breaker.Enabled {
					ks.FreesAt[res.Window] = b.Now.Add(res.RetryAfter)
				}
			}
			out = append(out, ks)
		}
	}
	return limiter.TopBudgetKeys(spec, out, limit), nil
}

// HottestRates implements Inspector: it SCANs every master for the rule's
// keys and reads their theoretical arrival times. On a cluster the masters
// are read concurrently (ForEachMaster runs one goroutine per master): each
// read builds its own slice and merges it into out under mu.
func (s *RedisStore) HottestRates(ctx context.Context, spec *limiter.RateSpec, limit int) ([]limiter.RateKeyStatus, error) {
	base := s.prefix + "{r:" + spec.ID + ":"
	pattern := globEscape(base) + "*"
	var (
		mu  sync.Mutex
		out []limiter.RateKeyStatus
	)
	read := func(ctx context.Context, node redis.Cmdable) error {
		keys, err := scanKeys(ctx, node, pattern, s.timeout)
		if err != nil || len(keys) == 0 {
			return err
		}
		// Each key has its own slot: read them one by one in a pipeline per node.
		cctx, cancel := context.WithTimeout(ctx, 10*s.timeout)
		defer cancel()
		tcmd := node.Time(cctx)
		pipe := node.Pipeline()
		gets := make([]*redis.StringCmd, len(keys))
		for i, k := range keys {
			gets[i] = pipe.Get(cctx, k)
		}
		_, _ = pipe.Exec(cctx)
		now, err := tcmd.Result()
		if err != nil {
			return err
		}
		if s.clock != nil {
			now = s.clock.Now()
		}
		var mine []limiter.RateKeyStatus
		for i, g := range gets {
			tat, ok := parseTAT(g.Val())
			if !ok || tat <= now.UnixNano() {
				continue
			}
			mine = append(mine, limiter.NewRateKeyStatus(spec, rateKeyName(keys[i]), tat, now.UnixNano()))
		}
		mu.Lock()
		out = append(out, mine...)
		mu.Unlock()
		return nil
	}
	if err := s.onEachMaster(ctx, read); err != nil {
		return nil, fmt.Errorf("failed to inspect rate limit %s: %w", spec.Name, err)
	}
	return limiter.TopRateKeys(out, limit), nil
}

// budgetNode is the node that holds the {b} slot.
func (s *RedisStore) budgetNode(ctx context.Context) (redis.Cmdable, error) {
	cc, ok := s.client.(*redis.ClusterClient)
	if !ok {
		return s.client, nil
	}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return cc.MasterForKey(cctx, s.prefix+"{b}")
}

// scanKeys returns up to limiter.InspectScanCap keys matching pattern on one node.
func scanKeys(ctx context.Context, node redis.Cmdable, pattern string, timeout time.Duration) ([]string, error) {
	var keys []string
	var cursor uint64
	for len(keys) < limiter.InspectScanCap {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		batch, next, err := node.Scan(cctx, cursor, pattern, 1000).Result()
		cancel()
		if err != nil {
			return nil, err
		}
		keys = append(keys, batch...)
		if cursor = next; cursor == 0 {
			break
		}
	}
	return keys, nil
}

// parseTAT reads the "S.NNNNNNNNN" arrival time the rate script stores.
func parseTAT(v string) (int64, bool) {
	sec, ns, ok := strings.Cut(v, ".")
	if !ok {
		return 0, false
	}
	s, err1 := strconv.ParseInt(sec, 10, 64)
	n, err2 := strconv.ParseInt(ns, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return s*int64(time.Second) + n, true
}
