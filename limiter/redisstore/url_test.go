package redisstore

import (
	"net/url"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func TestParseRedisURL(t *testing.T) {
	cases := []struct {
		name    string
		url     string
		addrs   string
		db      int
		user    string
		pass    string
		master  string
		cluster bool
		tls     bool
		err     string
	}{
		{name: "a single node with defaults", url: "redis://localhost", addrs: "localhost:6379"},
		{name: "a single node with port, db and credentials", url: "redis://kd:s%40cret@10.0.0.1:7000/3", addrs: "10.0.0.1:7000", db: 3, user: "kd", pass: "s@cret"},
		{name: "a password alone", url: "redis://:pw@h:1/0", addrs: "h:1", pass: "pw"},
		{name: "a password with a raw slash", url: "redis://:pa/ss@host", addrs: "host:6379", pass: "pa/ss"},
		{name: "a password with raw '@', ':', '?' and '#'", url: "redis://u:p@s:s?x#y@h:7/2", addrs: "h:7", db: 2, user: "u", pass: "p@s:s?x#y"},
		{name: "a percent-encoded slash", url: "redis://:p%2Fw@h", addrs: "h:6379", pass: "p/w"},
		{name: "TLS", url: "rediss://h:6380", addrs: "h:6380", tls: true},
		{name: "IPv6 in brackets", url: "redis://[::1]:6379/1", addrs: "[::1]:6379", db: 1},
		{name: "IPv6 in brackets without a port", url: "redis://[::1]", addrs: "[::1]:6379"},
		{name: "Sentinel with master and db", url: "redis+sentinel://u:p@s1:26379,s2,s3:5000/mymaster/2", addrs: "s1:26379,s2:26379,s3:5000", db: 2, user: "u", pass: "p", master: "mymaster"},
		{name: "Sentinel with a slash in the password", url: "redis+sentinel://:a/b@s1/m", addrs: "s1:26379", pass: "a/b", master: "m"},
		{name: "Sentinel over TLS", url: "rediss+sentinel://s1/m", addrs: "s1:26379", master: "m", tls: true},
		{name: "a cluster", url: "redis+cluster://n1:7000,n2:7001", addrs: "n1:7000,n2:7001", cluster: true},
		{name: "a cluster with a slash in the password", url: "redis+cluster://:x/y@n1:7000,n2:7001", addrs: "n1:7000,n2:7001", pass: "x/y", cluster: true},
		{name: "a cluster of one seed over TLS", url: "rediss+cluster://n1", addrs: "n1:6379", cluster: true, tls: true},
		{name: "no scheme", url: "localhost:6379", err: "missing scheme"},
		{name: "an unknown scheme", url: "http://h", err: `unsupported scheme "http"`},
		{name: "several hosts for a single node", url: "redis://a,b", err: "takes one host"},
		{name: "a bad port", url: "redis://h:99999", err: "port 99999 is not a number from 1 to 65535"},
		{name: "a bad db", url: "redis://h/x", err: `database "x"`},
		{name: "a sentinel URL without master", url: "redis+sentinel://s1", err: "missing master name"},
		{name: "a cluster with a db", url: "redis+cluster://n1/0", err: "takes no path"},
		{name: "query parameters", url: "redis://h?dial_timeout=1s", err: "query parameters"},
		{name: "an empty host", url: "redis+cluster://a,,b", err: "empty host"},
		{name: "bare IPv6", url: "redis://::1", err: "brackets"},
		{name: "an unclosed IPv6 bracket", url: "redis://[::1", err: "does not close"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := ParseRedisURL(tc.url)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(o.Addrs, ","); got != tc.addrs {
				t.Errorf("addrs %q, want %q", got, tc.addrs)
			}
			if o.DB != tc.db || o.Username != tc.user || o.Password != tc.pass || o.MasterName != tc.master ||
				o.IsClusterMode != tc.cluster || (o.TLSConfig != nil) != tc.tls {
				t.Errorf("got db=%d user=%q pass=%q master=%q cluster=%v tls=%v", o.DB, o.Username, o.Password, o.MasterName, o.IsClusterMode, o.TLSConfig != nil)
			}
		})
	}
}

// TestParseRedisURLNeverShowsThePassword walks every error path with a
// password in the URL, written well or badly, and wants no trace of it in
// the message.
func TestParseRedisURLNeverShowsThePassword(t *testing.T) {
	cases := []struct {
		name, url, secret, err string
	}{
		{name: "a bad port after a password with a slash", url: "redis://:pa/ss@host:bad", secret: "pa/ss", err: "port is not a number"},
		{name: "a bad db after a password with a slash", url: "redis://:pa/ss@host/x", secret: "pa/ss", err: `database "x"`},
		{name: "a query after a password with a slash", url: "redis://:pa/ss@host?db=1", secret: "pa/ss", err: "query parameters"},
		{name: "several hosts after a password with a slash", url: "redis://:pa/ss@a,b", secret: "pa/ss", err: "takes one host"},
		{name: "a sentinel without master after a password with a slash", url: "redis+sentinel://:pa/ss@s1", secret: "pa/ss", err: "missing master name"},
		{name: "a cluster path after a password with a slash", url: "redis+cluster://:pa/ss@n1/0", secret: "pa/ss", err: "takes no path"},
		{name: "a password with '@' and a bad port", url: "redis://u:hun@ter2@h:bad", secret: "hun@ter2", err: "port is not a number"},
		{name: "a password with ':' and bare IPv6", url: "redis://u:hun:ter2@::1", secret: "hun:ter2", err: "brackets"},
		{name: "a password with a bad percent escape", url: "redis://u:100%zz@h", secret: "100%zz", err: "bad password encoding"},
		{name: "a password without its ':' and a bad escape", url: "redis://hun%zzter2@h", secret: "hun%zzter2", err: "bad user name encoding"},
		{name: "a password with '?' and '#' and an empty host", url: "redis://:a?b#c@", secret: "a?b#c", err: "no host"},
		{name: "the '@host' forgotten", url: "redis://user:hunter2", secret: "hunter2", err: "port is not a number"},
		{name: "the '@host' forgotten, a password with a slash", url: "redis://user:hun/ter2", secret: "hun/ter2", err: "port is not a number"},
		{name: "the '@host' forgotten, a password with ':'", url: "redis://user:hun:ter2", secret: "hun:ter2", err: "brackets"},
		{name: "the '@host' forgotten, a password alone", url: "redis://:hunter2", secret: "hunter2", err: "empty host name"},
		{name: "no scheme", url: "user:hunter2@h:6379", secret: "hunter2", err: "missing scheme"},
		{name: "no scheme and '://' in the password", url: "user:hun://ter2@h", secret: "hun", err: "malformed scheme"},
		{name: "an unknown scheme", url: "http://u:hunter2@h", secret: "hunter2", err: "unsupported scheme"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRedisURL(tc.url)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want an error containing %q", err, tc.err)
			}
			for _, s := range []string{tc.secret, url.PathEscape(tc.secret)} {
				if strings.Contains(err.Error(), s) {
					t.Fatalf("the error shows the password %q: %v", s, err)
				}
			}
		})
	}
}

// TestParseRedisURLErrorsDoNotDependOnThePassword builds URLs of every shape,
// good and bad, twice with passwords that differ only in their letters: the
// two parses must fail with the same message (so the message says nothing of
// the password) or both succeed with the password as written.
func TestParseRedisURLErrorsDoNotDependOnThePassword(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		// Without the '@' that ends the credentials (forgotten), the password has no '@' either.
		at := rapid.SampledFrom([]string{"@", ""}).Draw(rt, "at")
		tokens := []string{"L", "L", "L", "/", ":", "?", "#", ",", "%", "%2F", "[", "]", "//", "://"}
		if at != "" {
			tokens = append(tokens, "@")
		}
		shape := rapid.SliceOfN(rapid.SampledFrom(tokens), 1, 8).Draw(rt, "password")
		scheme := rapid.SampledFrom([]string{"redis://", "rediss://", "redis+sentinel://", "redis+cluster://", "http://", "", "redis:/"}).Draw(rt, "scheme")
		user := rapid.SampledFrom([]string{"", "u", "u%zz"}).Draw(rt, "user")
		hosts := rapid.SampledFrom([]string{"h", "h:6379", "h:99999", "h:x", "", "a,b", "a,,b", "::1", "[::1]", "[::1", "h:1,k:2"}).Draw(rt, "hosts")
		path := rapid.SampledFrom([]string{"", "/", "/0", "/x", "/m", "/m/0", "/a/b/c", "?q=1", "#f"}).Draw(rt, "path")
		pw := func(letter string) string { return strings.ReplaceAll(strings.Join(shape, ""), "L", letter) }
		build := func(p string) string { return scheme + user + ":" + p + at + hosts + path }
		o1, err1 := ParseRedisURL(build(pw("k")))
		o2, err2 := ParseRedisURL(build(pw("q")))
		switch {
		case (err1 == nil) != (err2 == nil):
			rt.Fatalf("%q: %v, %q: %v", build(pw("k")), err1, build(pw("q")), err2)
		case err1 != nil && err1.Error() != err2.Error():
			rt.Fatalf("the message depends on the password:\n%q: %v\n%q: %v", build(pw("k")), err1, build(pw("q")), err2)
		case err1 == nil && at == "@" && (o1.Password != mustUnescape(rt, pw("k")) || o2.Password != mustUnescape(rt, pw("q"))):
			rt.Fatalf("%q: password %q, want %q", build(pw("k")), o1.Password, mustUnescape(rt, pw("k")))
		}
	})
}

func mustUnescape(rt *rapid.T, s string) string {
	u, err := url.PathUnescape(s)
	if err != nil {
		rt.Fatalf("a URL with password %q parsed: %v", s, err)
	}
	return u
}

func TestRedisConfigReportsEveryProblemAtOnce(t *testing.T) {
	_, err := NewRedisStore(RedisConfig{URL: "redis://h:0", KeyPrefix: "kd:{x}:", Timeout: -1, TLSCertFile: "c.pem"})
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"port", "key prefix", "timeout: must not be negative", "set both the certificate and the key file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
