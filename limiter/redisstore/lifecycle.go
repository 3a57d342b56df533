package redisstore

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// The life of a RedisStore beside its decisions: the replica count its
// heartbeats keep, Run (scripts, heartbeats) and Close.

// Replicas returns how many replicas share the store: RedisConfig.Replicas
// when set, else the live replicas counted by heartbeats (at least 1; 1
// before the first heartbeat). Pass it as EngineConfig.Replicas.
func (s *RedisStore) Replicas() int {
	if s.replicasFixed > 0 {
		return s.replicasFixed
	}
	return int(max(1, s.replicas.Load()))
}

// Run loads the scripts and heartbeats this replica until ctx is done. Call
// it once, in its own goroutine; decisions work without it (scripts load on
// first use) but Replicas then stays at 1.
func (s *RedisStore) Run(ctx context.Context) {
	s.loadScripts(ctx)
	t := s.timers.NewTicker(s.heartbeat)
	defer t.Stop()
	for {
		s.beat(ctx)
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		case <-t.C():
		}
	}
}

// onEachMaster runs fn on every master of a cluster, concurrently
// (ForEachMaster: one goroutine a master), or on the one server of a single
// node or Sentinel; it returns the first error.
func (s *RedisStore) onEachMaster(ctx context.Context, fn func(ctx context.Context, c redis.Cmdable) error) error {
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return fn(ctx, c) })
	}
	return fn(ctx, s.client)
}

func (s *RedisStore) loadScripts(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*s.timeout)
	defer cancel()
	load := func(ctx context.Context, c redis.Cmdable) error {
		for _, sc := range []*redis.Script{s.scripts.budget, s.scripts.rate, s.scripts.heartbeat} {
			if err := sc.Load(ctx, c).Err(); err != nil {
				return err
			}
		}
		return nil
	}
	if err := s.onEachMaster(ctx, load); err != nil {
		s.log.Debug("failed to preload redis scripts; they load on first use", "err", err)
	}
}

// beat records this replica and refreshes the count of live replicas.
func (s *RedisStore) beat(ctx context.Context) {
	if s.open.Load() {
		return // keep the last count through an outage
	}
	ttl := redisHeartbeatTTLPeriods * s.heartbeat
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	n, err := s.scripts.heartbeat.Run(ctx, s.client, []string{s.hbKey}, s.replicaID, ttl.Milliseconds()).Int64()
	if err != nil {
		s.log.Debug("failed to record replica heartbeat", "err", err)
		return
	}
	if old := s.replicas.Swap(n); old != n {
		s.log.Info("replicas sharing the redis store", "replicas", n, "was", old)
	}
}

// Close stops the background probe and the heartbeats, removes this
// replica from the live set (best effort) and closes the client. Decisions
// after Close fail.
func (s *RedisStore) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.openMu.Lock() // trip starts probes under openMu: none starts after this
		close(s.stop)
		s.openMu.Unlock()
		s.wg.Wait()
		if !s.open.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			_ = s.client.ZRem(ctx, s.hbKey, s.replicaID).Err()
			cancel()
		}
		if e := s.client.Close(); e != nil {
			err = fmt.Errorf("failed to close redis client: %w", e)
		}
	})
	return err
}
