package redisstore

import "github.com/kubedefender/kubedefender/limiter"

// NewBackend builds a RedisStore from cfg (see NewRedisStore) with what its
// owner needs: the live replica count, Run (scripts and heartbeats) and
// Close (leave the live set, close the client).
func NewBackend(cfg RedisConfig) (limiter.Backend, error) {
	s, err := NewRedisStore(cfg)
	if err != nil {
		return limiter.Backend{}, err
	}
	return limiter.Backend{Store: s, Mode: "redis", Replicas: s.Replicas, Run: s.Run, Close: s.Close}, nil
}
