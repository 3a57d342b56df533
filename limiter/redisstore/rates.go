package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kubedefender/kubedefender/limiter"
)

// Rates implements Store: one EVALSHA for the batch (single node, Sentinel),
// or one pipeline of one script per check (Cluster).
func (s *RedisStore) Rates(ctx context.Context, b *limiter.RateBatch) error {
	b.Results = b.Results[:0]
	if len(b.Checks) == 0 {
		b.Now = s.now()
		return nil
	}
	for i := range b.Checks {
		if err := b.Checks[i].Spec.Check(); err != nil {
			return fmt.Errorf("failed to judge rate limits: %w", err)
		}
	}
	if err := s.allow(); err != nil {
		return err
	}
	start := s.timers.Now()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var err error
	if s.cluster && len(b.Checks) > 1 {
		err = s.ratesPipelined(ctx, b)
	} else {
		err = s.ratesScript(ctx, b)
	}
	if err = s.done(ctx, opRates, start, err); err != nil {
		b.Results = b.Results[:0]
		return fmt.Errorf("failed to judge rate limits: %w", err)
	}
	return nil
}

func (s *RedisStore) rateArgs(a *redisArgs, checks []limiter.RateCheck) {
	a.args = s.nowArgs(a.args)
	a.args = append(a.args, s.ttlFloor, s.rateIdle, s.perShard)
	for i := range checks {
		c := &checks[i]
		bucket, index, overflow := s.rateKeys(c.Spec, c.Key)
		a.keys = append(a.keys, bucket, index, overflow)
		iv := c.Spec.Interval
		a.args = append(a.args, boolArg(c.Shadow), int64(iv/time.Second), int64(iv%time.Second), c.Spec.Burst)
	}
}

func (s *RedisStore) ratesScript(ctx context.Context, b *limiter.RateBatch) error {
	a := s.getArgs()
	defer s.putArgs(a)
	s.rateArgs(a, b.Checks)
	res, err := s.scripts.rate.Run(ctx, s.exec, a.keys, a.args...).Int64Slice()
	if err != nil {
		return err
	}
	if len(res) != 2+4*len(b.Checks) {
		return fmt.Errorf("%w: rate script returned %d values for %d checks", limiter.ErrStoreUnavailable, len(res), len(b.Checks))
	}
	b.Now = time.Unix(res[0], res[1])
	for i := range b.Checks {
		b.Results = append(b.Results, s.rateResult(res[2+4*i:6+4*i]))
	}
	return nil
}

// rateResult reads one check's status, retryS, retryNs, overflowed.
func (s *RedisStore) rateResult(r []int64) limiter.RateResult {
	if r[3] == 1 {
		s.overflowed.Add(1)
	}
	return limiter.RateResult{Allowed: r[0] == 1, Skipped: r[0] == 2, RetryAfter: time.Duration(r[1])*time.Second + time.Duration(r[2])}
}

// ratesPipelined sends one script per check in one pipeline: on a cluster
// the checks' keys are in different slots. Checks after the first non-shadow
// denial are reported skipped although they were charged.
func (s *RedisStore) ratesPipelined(ctx context.Context, b *limiter.RateBatch) error {
	cmds := make([]*redis.Cmd, len(b.Checks))
	args := make([]*redisArgs, len(b.Checks))
	for i := range b.Checks {
		args[i] = s.getArgs()
		s.rateArgs(args[i], b.Checks[i:i+1])
	}
	defer func() {
		for _, a := range args {
			s.putArgs(a)
		}
	}()
	run := func(eval bool, only []bool) error {
		pipe := s.client.Pipeline()
		for i := range b.Checks {
			if only != nil && !only[i] {
				continue
			}
			if eval {
				cmds[i] = s.scripts.rate.Eval(ctx, pipe, args[i].keys, args[i].args...)
			} else {
				cmds[i] = s.scripts.rate.EvalSha(ctx, pipe, args[i].keys, args[i].args...)
			}
		}
		_, err := pipe.Exec(ctx)
		return err
	}
	err := run(false, nil)
	if err != nil {
		// Scripts missing on a node (NOSCRIPT) did not run: load them by EVAL.
		var retry []bool
		for i, c := range cmds {
			if c.Err() != nil && redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				if retry == nil {
					retry = make([]bool, len(cmds))
				}
				retry[i] = true
			}
		}
		if retry == nil {
			return err
		}
		if err := run(true, retry); err != nil {
			return err
		}
	}
	denied := false
	for i, c := range cmds {
		res, err := c.Int64Slice()
		if err != nil {
			return err
		}
		if len(res) != 6 {
			return fmt.Errorf("%w: rate script returned %d values", limiter.ErrStoreUnavailable, len(res))
		}
		if i == 0 {
			b.Now = time.Unix(res[0], res[1])
		}
		r := s.rateResult(res[2:6])
		if denied {
			r = limiter.RateResult{Skipped: true}
		} else if !r.Allowed && !b.Checks[i].Shadow {
			denied = true
		}
		b.Results = append(b.Results, r)
	}
	return nil
}

// rateKeys returns the bucket, index and overflow keys of one rate key:
// <prefix>{r:<rule id>:<shard>}k:<key>, …}i and …}o, the shard (the hash tag)
// being the memory store's (limiter.RateShard).
func (s *RedisStore) rateKeys(spec *limiter.RateSpec, key string) (bucket, index, overflow string) {
	base := s.prefix + "{r:" + spec.ID + ":" + strconv.Itoa(limiter.RateShard(key)) + "}"
	return base + "k:" + key, base + "i", base + "o"
}

// rateKeyName returns the rate key a Redis bucket key holds, "(overflow)" for
// a shard's overflow bucket, "" for anything else.
func rateKeyName(redisKey string) string {
	_, rest, ok := strings.Cut(redisKey, "}")
	switch {
	case !ok:
		return ""
	case strings.HasPrefix(rest, "k:"):
		return rest[2:]
	case rest == "o":
		return "(overflow)"
	}
	return ""
}
