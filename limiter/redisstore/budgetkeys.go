package redisstore

import (
	"context"
	"encoding/binary"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kubedefender/kubedefender/limiter"
)

// Budget key names (budgetlua.go has the layout). A budget key is one string,
// <prefix>{b}:<rule id>:<key>:v2. A key still in the layout of before (a
// hash <key>:h and a sorted set <key>:z) is judged, carried, reset and
// inspected alike, until the budget script writes it in v2 and deletes the
// two old ones.
const (
	budgetSuffix  = ":v2"
	oldHashSuffix = ":h"
	oldLogSuffix  = ":z"
)

// budgetLayouts are the suffixes a rule's keys are found by: this layout,
// then the one before.
var budgetLayouts = [...]string{budgetSuffix, oldHashSuffix}

// budgetKeys returns the Redis keys of one budget key: its string, and the
// hash and log of the layout of before.
func (s *RedisStore) budgetKeys(spec *limiter.BudgetSpec, key string) (packed, hash, log string) {
	base := s.budgetBase(spec) + key
	return base + budgetSuffix, base + oldHashSuffix, base + oldLogSuffix
}

// budgetKey returns the Redis key of one budget key in this layout.
func (s *RedisStore) budgetKey(spec *limiter.BudgetSpec, key string) string {
	return s.prefix + "{b}:" + spec.ID + ":" + key + budgetSuffix
}

// budgetBase starts every Redis key of one budget rule.
func (s *RedisStore) budgetBase(spec *limiter.BudgetSpec) string {
	return s.prefix + "{b}:" + spec.ID + ":"
}

// scanBudgetKeys calls fn with the keys (as the rule names them) of the rule
// whose Redis keys start with base, in batches: those in this layout, then
// those still in the layout of before. A key in both is passed twice.
func scanBudgetKeys(ctx context.Context, node redis.Cmdable, base string, timeout time.Duration, fn func(keys []string) error) error {
	for _, suffix := range budgetLayouts {
		err := scanEach(ctx, node, globEscape(base)+"*"+globEscape(suffix), timeout, func(found []string) error {
			keys := make([]string, len(found))
			for i, k := range found {
				keys[i] = strings.TrimSuffix(strings.TrimPrefix(k, base), suffix)
			}
			return fn(keys)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// budgetKeyNames returns the keys (as the rule names them) of the rule whose
// Redis keys start with base, each once, about limiter.InspectScanCap at most.
func budgetKeyNames(ctx context.Context, node redis.Cmdable, base string, timeout time.Duration) ([]string, error) {
	var names []string
	seen := map[string]bool{}
	for _, suffix := range budgetLayouts {
		if len(names) >= limiter.InspectScanCap {
			break
		}
		found, err := scanKeys(ctx, node, globEscape(base)+"*"+globEscape(suffix), timeout)
		if err != nil {
			return nil, err
		}
		for _, k := range found {
			name := strings.TrimSuffix(strings.TrimPrefix(k, base), suffix)
			if !seen[name] {
				seen[name] = true
				names = append(names, name)
			}
		}
	}
	return names, nil
}

// appendBudgetCheck packs one check as budgetLua reads it (struct.unpack,
// little endian): shadow (1 byte), cost (8), then the rule's spec: windows,
// breaker enabled, manual (1 byte each), cooldown (ns), half-open limit (8
// bytes each), each window's length (ns) and limit (8 bytes each). One
// argument instead of 8+2×windows numbers that Redis would make Lua strings
// of and the script parse; the script reads a spec once per call, however
// many checks of the call name it.
func appendBudgetCheck(buf []byte, c *limiter.BudgetCheck) []byte {
	br := &c.Spec.Breaker
	buf = append(buf, byte(boolArg(c.Shadow)))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(c.Tokens()))
	buf = append(buf, byte(len(c.Spec.Windows)), byte(boolArg(br.Enabled)), byte(boolArg(br.Manual)))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(br.Cooldown))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(br.HalfOpenLimit))
	for _, w := range c.Spec.Windows {
		buf = binary.LittleEndian.AppendUint64(buf, uint64(w.Length))
		buf = binary.LittleEndian.AppendUint64(buf, uint64(w.Limit))
	}
	return buf
}
