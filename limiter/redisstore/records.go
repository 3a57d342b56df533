package redisstore

import (
	"fmt"
	"regexp"
	"strings"
)

// recordFields are the fields of the budget script's record of one check
// (budgetLua's record()), in the order of its constructors. The script's
// source names them (c.st, c.used, nc.rss); recordsByIndex rewrites it to
// index an array (c[5]) instead: Redis's Lua builds and reads an array of 30
// values in about half the time of a table of 30 named fields, about a
// tenth of the script's work per check (BenchmarkRedisStore).
var recordFields = [...]string{
	"k", "shadow", "sp", "cost", // the check
	"st", "base", "ss", "sn", "ho", "c0", "log", "ef", "es", "tw", "cw", "n", "last", "newest", "oldest", // its key
	"d", "dc0", "now", // the judge's
	"allowed", "reason", "window", "retry", "used", "rst", "rss", "rsn", // its result
	"imported", // set only for a key of the layout of before, past the constructor
}

var (
	recordAccess      = regexp.MustCompile(`\b(n?c)\.(` + strings.Join(recordFields[:], "|") + `)\b`)
	recordConstructor = regexp.MustCompile(`--\[\[record\]\]\{([^}]*)\}`)
	recordIndex       = func() map[string]int {
		m := map[string]int{}
		for i, f := range recordFields {
			m[f] = i + 1
		}
		return m
	}()
)

// recordsByIndex rewrites src's record accesses (c.<field>, nc.<field>) as
// array indexing, and its record constructors (--[[record]]{name = value,
// …}, every field but the last in recordFields' order) as positional ones.
// It panics on a constructor out of that order: a bug in the script's
// source, which every test that loads the package finds.
func recordsByIndex(src string) string {
	src = recordConstructor.ReplaceAllStringFunc(src, func(ctor string) string {
		body := recordConstructor.FindStringSubmatch(ctor)[1]
		fields := strings.Split(body, ",")
		if len(fields) != len(recordFields)-1 {
			panic(fmt.Sprintf("budget script: a record constructor has %d fields, want %d", len(fields), len(recordFields)-1))
		}
		values := make([]string, len(fields))
		for i, f := range fields {
			name, value, ok := strings.Cut(f, "=")
			if name = strings.TrimSpace(name); !ok || name != recordFields[i] {
				panic(fmt.Sprintf("budget script: record constructor field %d is %q, want %s", i+1, name, recordFields[i]))
			}
			values[i] = strings.TrimSpace(value)
		}
		return "{" + strings.Join(values, ", ") + "}"
	})
	return recordAccess.ReplaceAllStringFunc(src, func(access string) string {
		m := recordAccess.FindStringSubmatch(access)
		return fmt.Sprintf("%s[%d]", m[1], recordIndex[m[2]])
	})
}
