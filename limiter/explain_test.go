package limiter

import (
	"strings"
	"testing"

	"github.com/kubedefender/kubedefender/policy"
)

func TestRuleKeyIsTheKeyDecideCounts(t *testing.T) {
	long := strings.Repeat("x", 300)
	tests := []struct {
		name string
		per  []string
		a    policy.Attributes
		want string
	}{
		{"no per is one cluster-wide key", nil, policy.Attributes{Namespace: "prod"}, "cluster-wide"},
		{"per namespace and user joins both", []string{"namespace", "user"}, policy.Attributes{Namespace: "prod", User: "alice"}, "namespace=prod,user=alice"},
		{"a long User-Agent is capped at 256 bytes", []string{"userAgent"}, policy.Attributes{UserAgent: long}, "userAgent=" + long[:256]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := RuleKey(tc.per, &tc.a); got != tc.want {
				t.Errorf("RuleKey = %q, want %q", got, tc.want)
			}
		})
	}
}
