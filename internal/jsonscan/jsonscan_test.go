package jsonscan

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// validates reports whether Skip and End accept b whole, and fails t when
// they disagree with json.Valid (nesting past MaxDepth may be declined).
func validates(t *testing.T, b []byte) bool {
	t.Helper()
	d := Scanner{B: b}
	err := d.Skip()
	if err == nil {
		err = d.End()
	}
	valid := json.Valid(b)
	switch {
	case err == nil && !valid:
		t.Fatalf("the scanner accepts what encoding/json refuses: %q", b)
	case err != nil && valid && !errors.Is(err, ErrSlowPath):
		t.Fatalf("the scanner refuses (%v) what encoding/json accepts: %q", err, b)
	}
	return err == nil
}

// FuzzSkip holds Skip to json.Valid: it accepts exactly the valid JSON
// texts (declining only nesting deeper than MaxDepth). Run:
// go test ./internal/jsonscan -run '^$' -fuzz FuzzSkip -fuzztime 30s
func FuzzSkip(f *testing.F) {
	for _, s := range skipCases {
		f.Add([]byte(s.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) { validates(t, b) })
}

var skipCases = []struct {
	in    string
	valid bool
}{
	{in: `{"a":[1,-2.5e+3,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9"],"b":{}}`, valid: true},
	{in: " \t\r\n[ ] ", valid: true},
	{in: `"invalid UTF-8 ` + "\xff" + ` is replaced, not refused"`, valid: true},
	{in: `0`, valid: true},
	{in: `-0.0e-0`, valid: true},
	{in: `1e999999`, valid: true},
	{in: ``},
	{in: ` `},
	{in: `01`},
	{in: `1.`},
	{in: `.5`},
	{in: `-`},
	{in: `1e`},
	{in: `+1`},
	{in: `tru`},
	{in: `nulll`},
	{in: `[1,]`},
	{in: `{"a":1,}`},
	{in: `{"a" 1}`},
	{in: `{a:1}`},
	{in: `{"a":}`},
	{in: `"\x"`},
	{in: `"\u12g4"`},
	{in: `"\u12"`},
	{in: "\"a\x1fb\""},
	{in: `"unterminated`},
	{in: `[`},
	{in: `[] []`},
	{in: "\x00"},
	{in: "\ufeff{}"},
}

func TestSkipAcceptsWhatEncodingJSONAccepts(t *testing.T) {
	for _, tc := range skipCases {
		t.Run(tc.in, func(t *testing.T) {
			if got := validates(t, []byte(tc.in)); got != tc.valid {
				t.Errorf("accepted: %v, want %v", got, tc.valid)
			}
		})
	}
}

func TestSkipDeclinesNestingPastMaxDepth(t *testing.T) {
	deep := []byte(strings.Repeat("[", MaxDepth+2) + strings.Repeat("]", MaxDepth+2))
	d := Scanner{B: deep}
	if err := d.Skip(); !errors.Is(err, ErrSlowPath) {
		t.Errorf("Skip of %d nested arrays: %v, want ErrSlowPath", MaxDepth+2, err)
	}
	ok := []byte(strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth))
	if !validates(t, ok) {
		t.Errorf("Skip of %d nested arrays is declined", MaxDepth)
	}
}

// Other declines a key that encoding/json would match to a known field
// ignoring case, and skips any other.
func TestOtherDeclinesKeysThatFoldToAField(t *testing.T) {
	cases := []struct {
		name, key string
		declined  bool
	}{
		{name: "a key in another case", key: "UID", declined: true},
		{name: "a key with the Kelvin sign", key: "\u212aind", declined: true},
		{name: "a key with the long s", key: "\u017fubResource", declined: true},
		{name: "an unrelated key", key: "requestKind"},
		{name: "a longer key", key: "uids"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := Scanner{B: []byte(`1`)}
			err := d.Other([]byte(tc.key), "uid", "kind", "subResource")
			if got := errors.Is(err, ErrSlowPath); got != tc.declined || !got && err != nil {
				t.Errorf("Other(%q) = %v, want declined %v", tc.key, err, tc.declined)
			}
		})
	}
}
