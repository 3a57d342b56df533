package limiter

import (
	"strings"
	"testing"
)

func TestParseBudgetKey(t *testing.T) {
	cases := []struct {
		name string
		per  []string
		key  string
		want []string
	}{
		{"namespace then user", []string{"namespace", "user"}, "namespace=prod,user=alice", []string{"prod", "alice"}},
		{"a user name with commas and equals signs", []string{"namespace", "user"}, "namespace=prod,user=a,user=b", []string{"prod", "a,user=b"}},
		{"user then namespace", []string{"user", "namespace"}, "user=a,namespace=x,namespace=prod", []string{"a,namespace=x", "prod"}},
		{"one dimension", []string{"user"}, "user=a,b", []string{"a,b"}},
		{"a key of another layout does not parse", []string{"namespace", "user"}, "user=a", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseBudgetKey(tc.per, tc.key)
			if !ok {
				got = nil
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") || (got == nil) != (tc.want == nil) {
				t.Fatalf("parseBudgetKey(%v, %q) = %q, want %q", tc.per, tc.key, got, tc.want)
			}
		})
	}
}
