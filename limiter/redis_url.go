package limiter

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ParseRedisURL turns a --redis-url into client options. The forms are:
//
//	redis://[user:pass@]host[:port][/db]                       single node (port 6379, db 0 by default)
//	rediss://[user:pass@]host[:port][/db]                      the same over TLS
//	redis+sentinel://[user:pass@]host1[:port],host2[:port]/master[/db]
//	                                                           Sentinel: the addresses are the sentinels
//	                                                           (port 26379 by default), master is the
//	                                                           name they monitor; user:pass is for the
//	                                                           Redis nodes, not the sentinels
//	rediss+sentinel://...                                      the same over TLS
//	redis+cluster://[user:pass@]host1[:port],host2[:port]      Redis Cluster: seed nodes (any masters
//	                                                           or replicas); there is no db
//	rediss+cluster://...                                       the same over TLS
//
// User and password are percent-encoded ("p%40ss" for "p@ss"); a password
// alone is written ":pass@". Query parameters are not accepted: what a URL
// cannot say (timeouts, CA file, sentinel credentials) is set in RedisConfig.
// The result is fed to redis.NewUniversalClient: MasterName set means
// Sentinel, IsClusterMode means Cluster.
func ParseRedisURL(s string) (*redis.UniversalOptions, error) {
	opts, err := parseRedisURL(s)
	if err != nil {
		return nil, fmt.Errorf("failed to parse redis URL %q: %w", redactURL(s), err)
	}
	return opts, nil
}

func parseRedisURL(s string) (*redis.UniversalOptions, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return nil, errors.New("missing scheme: want redis://, rediss://, redis+sentinel://, redis+cluster:// (or rediss+…)")
	}
	var mode string
	var useTLS bool
	switch strings.ToLower(scheme) {
	case "redis":
		mode = "single"
	case "rediss":
		mode, useTLS = "single", true
	case "redis+sentinel":
		mode = "sentinel"
	case "rediss+sentinel":
		mode, useTLS = "sentinel", true
	case "redis+cluster":
		mode = "cluster"
	case "rediss+cluster":
		mode, useTLS = "cluster", true
	default:
		return nil, fmt.Errorf("unsupported scheme %q: want redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster", scheme)
	}
	if strings.ContainsAny(rest, "?#") {
		return nil, errors.New("query parameters and fragments are not supported; set options in the configuration instead")
	}
	hostPart, path, _ := strings.Cut(rest, "/")
	opts := &redis.UniversalOptions{}
	if at := strings.LastIndex(hostPart, "@"); at >= 0 {
		user, pass, err := parseUserinfo(hostPart[:at])
		if err != nil {
			return nil, err
		}
		opts.Username, opts.Password = user, pass
		hostPart = hostPart[at+1:]
	}
	defPort := "6379"
	if mode == "sentinel" {
		defPort = "26379"
	}
	if hostPart == "" {
		return nil, errors.New("no host")
	}
	for _, h := range strings.Split(hostPart, ",") {
		addr, err := parseHostPort(h, defPort)
		if err != nil {
			return nil, err
		}
		opts.Addrs = append(opts.Addrs, addr)
	}
	segs := []string{}
	if path != "" {
		segs = strings.Split(strings.TrimSuffix(path, "/"), "/")
	}
	switch mode {
	case "single":
		if len(opts.Addrs) != 1 {
			return nil, fmt.Errorf("%s:// takes one host, got %d: use redis+cluster:// or redis+sentinel:// for several", scheme, len(opts.Addrs))
		}
		if len(segs) > 1 {
			return nil, fmt.Errorf("path %q: want /db", "/"+path)
		}
		if len(segs) == 1 {
			db, err := parseDB(segs[0])
			if err != nil {
				return nil, err
			}
			opts.DB = db
		}
	case "sentinel":
		if len(segs) == 0 || segs[0] == "" {
			return nil, errors.New("missing master name: want redis+sentinel://host:port,…/mastername[/db]")
		}
		if len(segs) > 2 {
			return nil, fmt.Errorf("path %q: want /mastername[/db]", "/"+path)
		}
		name, err := url.PathUnescape(segs[0])
		if err != nil {
			return nil, fmt.Errorf("master name %q: %w", segs[0], err)
		}
		opts.MasterName = name
		if len(segs) == 2 {
			db, err := parseDB(segs[1])
			if err != nil {
				return nil, err
			}
			opts.DB = db
		}
	case "cluster":
		if len(segs) > 0 {
			return nil, fmt.Errorf("path %q: a cluster has no database number and takes no path", "/"+path)
		}
		opts.IsClusterMode = true
	}
	if useTLS {
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return opts, nil
}

func parseUserinfo(s string) (user, pass string, err error) {
	u, p, hasPass := strings.Cut(s, ":")
	if user, err = url.PathUnescape(u); err != nil {
		return "", "", fmt.Errorf("bad user name encoding: %w", err)
	}
	if hasPass {
		if pass, err = url.PathUnescape(p); err != nil {
			return "", "", errors.New("bad password encoding (percent-encode reserved characters)")
		}
	}
	return user, pass, nil
}

func parseHostPort(h, defPort string) (string, error) {
	if h == "" {
		return "", errors.New("empty host in host list")
	}
	host, port := h, defPort
	if strings.HasPrefix(h, "[") || strings.Count(h, ":") == 1 {
		if strings.HasPrefix(h, "[") && !strings.Contains(h, "]:") {
			host = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		} else {
			var err error
			if host, port, err = net.SplitHostPort(h); err != nil {
				return "", fmt.Errorf("host %q: %w", h, err)
			}
		}
	} else if strings.Contains(h, ":") {
		return "", fmt.Errorf("host %q: write IPv6 addresses in brackets, e.g. [::1]:6379", h)
	}
	if host == "" {
		return "", fmt.Errorf("host %q: empty host name", h)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("host %q: port %q is not a number from 1 to 65535", h, port)
	}
	return net.JoinHostPort(host, port), nil
}

func parseDB(s string) (int, error) {
	db, err := strconv.Atoi(s)
	if err != nil || db < 0 {
		return 0, fmt.Errorf("database %q is not a number ≥ 0", s)
	}
	return db, nil
}

// redactURL hides the password of a redis URL, for error messages and logs.
func redactURL(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		if strings.Contains(s, "@") {
			return "<redacted>"
		}
		return s
	}
	hostPart, path, hasPath := strings.Cut(rest, "/")
	if at := strings.LastIndex(hostPart, "@"); at >= 0 {
		user, _, hasPass := strings.Cut(hostPart[:at], ":")
		if hasPass {
			hostPart = user + ":xxxxx" + hostPart[at:]
		}
	}
	out := scheme + "://" + hostPart
	if hasPath {
		out += "/" + path
	}
	return out
}
