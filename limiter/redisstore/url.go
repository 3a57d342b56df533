package redisstore

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
// User and password should be percent-encoded ("p%40ss" for "p@ss"); a
// password alone is written ":pass@". The credentials end at the last '@', so
// a password with a raw '/', '@', ':', '?' or '#' still reads as intended
// ('%' must be written %25); an '@' in a master name must be percent-encoded.
// Query parameters are not accepted: what a URL cannot say (timeouts, CA
// file, sentinel credentials) is set in RedisConfig.
// The result is fed to redis.NewUniversalClient: MasterName set means
// Sentinel, IsClusterMode means Cluster.
//
// An error never quotes the URL, its user information or anything the parser
// could not tell apart from a password: only the scheme (when it is a
// well-formed scheme), host names, numeric ports and path segments after the
// credentials.
func ParseRedisURL(s string) (*redis.UniversalOptions, error) {
	opts, err := parseRedisURL(s)
	if err != nil {
		return nil, fmt.Errorf("failed to parse redis URL: %w", err)
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
		const want = "want redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster"
		if !wellFormedScheme(scheme) {
			// A "scheme" such as "user:pa" is someone's credentials before a "://" in a password.
			return nil, errors.New("missing or malformed scheme: " + want)
		}
		return nil, fmt.Errorf("unsupported scheme %q: %s", scheme, want)
	}
	opts := &redis.UniversalOptions{}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		user, pass, err := parseUserinfo(rest[:at])
		if err != nil {
			return nil, err
		}
		opts.Username, opts.Password = user, pass
		rest = rest[at+1:]
	}
	if strings.ContainsAny(rest, "?#") {
		return nil, errors.New("query parameters and fragments are not supported; set options in the configuration instead")
	}
	hostPart, path, _ := strings.Cut(rest, "/")
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
		// Not quoted: a password written without its ':' reads as a user name.
		return "", "", errors.New("bad user name encoding (percent-encode reserved characters)")
	}
	if hasPass {
		if pass, err = url.PathUnescape(p); err != nil {
			return "", "", errors.New("bad password encoding (percent-encode reserved characters)")
		}
	}
	return user, pass, nil
}

// parseHostPort checks one host[:port]. Its errors quote the host name and a
// numeric port only: with the '@' forgotten, "user:secret" reads as a host
// and a port, and that port is a password.
func parseHostPort(h, defPort string) (string, error) {
	if h == "" {
		return "", errors.New("empty host in host list")
	}
	host, port := h, defPort
	switch {
	case strings.HasPrefix(h, "["):
		end := strings.Index(h, "]")
		if end < 0 {
			return "", errors.New("an IPv6 address opens '[' and does not close it")
		}
		host = h[1:end]
		switch after := h[end+1:]; {
		case after == "":
		case strings.HasPrefix(after, ":"):
			port = after[1:]
		default:
			return "", fmt.Errorf("host [%s]: want [address]:port", host)
		}
	case strings.Count(h, ":") == 1:
		host, port, _ = strings.Cut(h, ":")
	case strings.Contains(h, ":"):
		name, _, _ := strings.Cut(h, ":")
		return "", fmt.Errorf("host %q followed by more than one ':': write IPv6 addresses in brackets, e.g. [::1]:6379, and percent-encode a password", name)
	}
	if host == "" {
		return "", errors.New("empty host name before ':'")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		if !allDigits(port) {
			return "", fmt.Errorf("host %q: the port is not a number from 1 to 65535 (a password goes before '@': redis://:password@host:port)", host)
		}
		return "", fmt.Errorf("host %q: port %s is not a number from 1 to 65535", host, port)
	}
	return net.JoinHostPort(host, port), nil
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// wellFormedScheme reports whether s is a URL scheme as RFC 3986 writes it.
func wellFormedScheme(s string) bool {
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

func parseDB(s string) (int, error) {
	db, err := strconv.Atoi(s)
	if err != nil || db < 0 {
		return 0, fmt.Errorf("database %q is not a number ≥ 0", s)
	}
	return db, nil
}
