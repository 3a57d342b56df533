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
	c := &budgetCall{b: b}
	c.width = answerCheck + 9*answerUsed
	res := string(make([]byte, answerHead+c.width))
	if err := walkAnswers([]*budgetCall{c}, res); err != nil {
		t.Fatal(err)
	}
	if err := s.decodeBudgets(c, res, 0); err == nil {
		t.Error("the Redis decoder read 9 windows into a result that holds 8")
	}
}

// TestWalkAnswersRefusesAnswersOfAnotherShape: a short answer, an unknown
// status or bytes left over are an error for the whole call, never a
// panic.
func TestWalkAnswersRefusesAnswersOfAnotherShape(t *testing.T) {
	one := storetest.Spec([]limiter.WindowSpec{{Length: time.Minute, Limit: 1}}, limiter.BreakerSpec{})
	c := &budgetCall{b: &limiter.BudgetBatch{Checks: []limiter.BudgetCheck{{Spec: one, Key: "k"}}}}
	c.width = answerCheck + answerUsed
	ok := string(make([]byte, answerHead+c.width))
	for name, res := range map[string]string{
		"empty":         "",
		"short head":    ok[:answerHead-1],
		"short result":  ok[:len(ok)-1],
		"left over":     ok + "x",
		"status 4":      "\x04" + ok[1:],
		"repeat, more":  "\x02" + ok[1:],
		"refused, less": "\x03" + ok[1:answerHead],
	} {
		if err := walkAnswers([]*budgetCall{c}, res); err == nil {
			t.Errorf("%s: walkAnswers accepted %d bytes", name, len(res))
		}
	}
	if err := walkAnswers([]*budgetCall{c}, ok); err != nil {
		t.Errorf("a well-formed answer: %v", err)
	}
}
