package redisstore

import (
	"regexp"
	"strings"
	"testing"
)

// TestTheBudgetScriptIndexesItsRecords: no record field is read by name in
// the script Redis runs, and both constructors are positional.
func TestTheBudgetScriptIndexesItsRecords(t *testing.T) {
	if m := regexp.MustCompile(`\bn?c\.(` + strings.Join(recordFields[:], "|") + `)\b`).FindString(budgetLua); m != "" {
		t.Errorf("the budget script still reads %s by name", m)
	}
	if strings.Contains(budgetLua, "--[[record]]") {
		t.Error("a record constructor was left named")
	}
	if n := strings.Count(budgetLua, "return {k, shadow, sp, cost, "); n != 2 {
		t.Errorf("%d positional record constructors, want 2", n)
	}
}

// TestRecordsByIndexRefusesAConstructorOutOfOrder: a constructor whose
// fields are not recordFields' order is a bug in the script, found at once.
func TestRecordsByIndexRefusesAConstructorOutOfOrder(t *testing.T) {
	var fields []string
	for _, f := range recordFields[:len(recordFields)-1] {
		fields = append(fields, f+" = 0")
	}
	fields[0], fields[1] = fields[1], fields[0]
	defer func() {
		if recover() == nil {
			t.Error("a constructor out of order was rewritten")
		}
	}()
	recordsByIndex("return --[[record]]{" + strings.Join(fields, ", ") + "}")
}

func TestRecordsByIndexRewritesAccessesAndConstructors(t *testing.T) {
	var fields []string
	for _, f := range recordFields[:len(recordFields)-1] {
		fields = append(fields, f+" = x."+f)
	}
	got := recordsByIndex("local r = --[[record]]{" + strings.Join(fields, ", ") + "}\nc.st, nc.rsn, c.dc0, c.d, c.imported, cc.st = 1, c.sp.nw")
	want := "local r = {x.k, x.shadow, x.sp, x.cost, x.st, x.base, x.ss, x.sn, x.ho, x.c0, x.log, x.ef, x.es, x.tw, x.cw, x.n, x.last, x.newest, x.oldest, x.d, x.dc0, x.now, x.allowed, x.reason, x.window, x.retry, x.used, x.rst, x.rss, x.rsn}\n" +
		"c[5], nc[30], c[21], c[20], c[31], cc.st = 1, c[3].nw"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
