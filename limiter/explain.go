package limiter

import (
	"strings"

	"github.com/kubedefender/kubedefender/policy"
)

// RuleKey returns the key under which a rule keyed per (namespace, user,
// userAgent) counts a request: exactly the key Decide builds (the User-Agent
// capped at 256 bytes), as `policy explain` and status show it
// ("cluster-wide" for a rule without per). It allocates; Decide does not
// call it.
func RuleKey(per []string, a *policy.Attributes) string {
	var sc scratch
	return displayKey(strings.Clone(sc.key(per, a)))
}

// MaxUserAgentKey is how many bytes of a User-Agent go into a key.
const MaxUserAgentKey = maxUserAgentKey
