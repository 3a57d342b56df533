package redisstore

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/storetest"
)

func TestRedisScriptKnowsMaxCost(t *testing.T) {
	if want := fmt.Sprintf("local MAXCOST = %d ", limiter.MaxCost); !strings.Contains(budgetLua, want) {
		t.Fatalf("budgetLua lacks %q: the stores would disagree on the largest cost", want)
	}
}

// TestDecoderRefusesMoreWindowsThanAResultHolds: a spec the stores cannot
// run (nine windows) is an error from the decoder, never a panic.
func TestDecoderRefusesMoreWindowsThanAResultHolds(t *testing.T) {
	var nine []limiter.WindowSpec
	for i := 1; i <= 9; i++ {
		nine = append(nine, limiter.WindowSpec{Length: time.Duration(i) * time.Minute, Limit: int64(i)})
	}
	b := &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: storetest.Spec(nine, limiter.BreakerSpec{}), Key: "k"}}}
	s := &RedisStore{}
	if _, err := s.decodeBudgets(&budgetCall{b: b}, string(make([]byte, answerHead+answerCheck+9*answerUsed)), 0); err == nil {
		t.Error("the Redis decoder read 9 windows into a result that holds 8")
	}
}
