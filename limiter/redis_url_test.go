package limiter

import (
	"strings"
	"testing"
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
		{name: "TLS", url: "rediss://h:6380", addrs: "h:6380", tls: true},
		{name: "IPv6 in brackets", url: "redis://[::1]:6379/1", addrs: "[::1]:6379", db: 1},
		{name: "Sentinel with master and db", url: "redis+sentinel://u:p@s1:26379,s2,s3:5000/mymaster/2", addrs: "s1:26379,s2:26379,s3:5000", db: 2, user: "u", pass: "p", master: "mymaster"},
		{name: "Sentinel over TLS", url: "rediss+sentinel://s1/m", addrs: "s1:26379", master: "m", tls: true},
		{name: "a cluster", url: "redis+cluster://n1:7000,n2:7001", addrs: "n1:7000,n2:7001", cluster: true},
		{name: "a cluster of one seed over TLS", url: "rediss+cluster://n1", addrs: "n1:6379", cluster: true, tls: true},
		{name: "no scheme", url: "localhost:6379", err: "missing scheme"},
		{name: "an unknown scheme", url: "http://h", err: `unsupported scheme "http"`},
		{name: "several hosts for a single node", url: "redis://a,b", err: "takes one host"},
		{name: "a bad port", url: "redis://h:99999", err: "not a number from 1 to 65535"},
		{name: "a bad db", url: "redis://h/x", err: `database "x"`},
		{name: "a sentinel URL without master", url: "redis+sentinel://s1", err: "missing master name"},
		{name: "a cluster with a db", url: "redis+cluster://n1/0", err: "takes no path"},
		{name: "query parameters", url: "redis://h?dial_timeout=1s", err: "query parameters"},
		{name: "an empty host", url: "redis+cluster://a,,b", err: "empty host"},
		{name: "bare IPv6", url: "redis://::1", err: "brackets"},
		{name: "a password is redacted in errors", url: "redis://u:hunter2@h:bad", err: "u:xxxxx@h:bad"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := ParseRedisURL(tc.url)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error containing %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("the error shows the password: %v", err)
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
