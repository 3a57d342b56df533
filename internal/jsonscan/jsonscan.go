// Package jsonscan owns the single-pass JSON scanner that the webhook's
// AdmissionReview decoder and replay's audit-event decoder walk: it hands
// out the keys of an object one by one, reads the few values a caller wants
// and validates and skips the rest without building them.
//
// It is the fast path of a decoder whose slow path is encoding/json. It
// accepts a subset of what encoding/json accepts and never more: anything
// it does not handle exactly as encoding/json would (an escaped key, a
// string that needs unescaping or holds invalid UTF-8, a key that matches a
// field only case-insensitively, nesting deeper than MaxDepth) is
// ErrSlowPath, and anything encoding/json refuses (bad syntax anywhere,
// skipped values included, or data after the value) is ErrSyntax. A caller
// that gets either error decodes the input again with encoding/json, which
// then words the error or decodes what the scanner declined.
package jsonscan

import (
	"bytes"
	"errors"
	"unicode/utf8"
)

var (
	// ErrSlowPath is returned for input the scanner declines; encoding/json
	// decodes it (or refuses it).
	ErrSlowPath = errors.New("use encoding/json")
	// ErrSyntax is returned for input that is not valid JSON.
	ErrSyntax = errors.New("invalid JSON")
)

// MaxDepth is the deepest nesting Skip follows; deeper input is
// ErrSlowPath (encoding/json refuses nesting past 10000).
const MaxDepth = 1000

// Scanner walks one JSON text. B is the input and I the offset of the next
// byte to read; a value read as bytes (RawString, Raw) points into B.
type Scanner struct {
	B []byte
	I int
}

// WS skips whitespace.
func (d *Scanner) WS() {
	for d.I < len(d.B) {
		switch d.B[d.I] {
		case ' ', '\t', '\n', '\r':
			d.I++
		default:
			return
		}
	}
}

// Peek returns the next byte after whitespace, 0 at the end.
func (d *Scanner) Peek() byte {
	d.WS()
	if d.I >= len(d.B) {
		return 0
	}
	return d.B[d.I]
}

// Expect consumes c (after whitespace) or fails with ErrSyntax.
func (d *Scanner) Expect(c byte) error {
	if d.Peek() != c {
		return ErrSyntax
	}
	d.I++
	return nil
}

// next consumes what follows a member of an object or array that close
// ends: a comma (another member follows) or close (done); anything else is a
// syntax error.
func (d *Scanner) next(close byte) (done bool, err error) {
	switch d.Peek() {
	case ',':
		d.I++
		return false, nil
	case close:
		d.I++
		return true, nil
	}
	return false, ErrSyntax
}

// End checks that only whitespace follows.
func (d *Scanner) End() error {
	d.WS()
	if d.I != len(d.B) {
		return ErrSyntax
	}
	return nil
}

// Object calls field for each key of an object, in order (a repeated key
// is passed each time); field must consume the value.
func (d *Scanner) Object(field func(key []byte) error) error {
	if err := d.Expect('{'); err != nil {
		return err
	}
	if d.Peek() == '}' {
		d.I++
		return nil
	}
	for {
		key, err := d.RawString()
		if err != nil {
			return err
		}
		if err := d.Expect(':'); err != nil {
			return err
		}
		if err := field(key); err != nil {
			return err
		}
		if done, err := d.next('}'); err != nil {
			return err
		} else if done {
			return nil
		}
	}
}

// RawString returns the bytes between the quotes of a string that needs no
// unescaping; a string with escapes or invalid UTF-8 is ErrSlowPath.
func (d *Scanner) RawString() ([]byte, error) {
	if d.Peek() != '"' {
		return nil, ErrSyntax
	}
	start := d.I + 1
	i := bytes.IndexByte(d.B[start:], '"')
	if i < 0 {
		return nil, ErrSyntax
	}
	s := d.B[start : start+i]
	if bytes.IndexByte(s, '\\') >= 0 {
		return nil, ErrSlowPath
	}
	high := false
	for _, c := range s {
		if c < 0x20 {
			return nil, ErrSyntax
		}
		high = high || c >= utf8.RuneSelf
	}
	if high && !utf8.Valid(s) {
		return nil, ErrSlowPath // encoding/json replaces invalid UTF-8
	}
	d.I = start + i + 1
	return s, nil
}

// Null consumes the literal null.
func (d *Scanner) Null() error {
	d.WS()
	if !bytes.HasPrefix(d.B[d.I:], []byte("null")) {
		return ErrSyntax
	}
	d.I += 4
	return nil
}

// StringInto reads a string into *p as encoding/json decodes one into a
// string field: null leaves *p as it was; any other kind of value is
// ErrSlowPath (encoding/json refuses it with its own words). intern, when
// not nil, makes the string.
func (d *Scanner) StringInto(p *string, intern func([]byte) string) error {
	switch d.Peek() {
	case 'n':
		return d.Null()
	case '"':
		s, err := d.RawString()
		if err != nil {
			return err
		}
		if intern != nil {
			*p = intern(s)
		} else {
			*p = string(s)
		}
		return nil
	}
	return ErrSlowPath
}

// Strings reads an array of strings as encoding/json decodes one into a
// []string: null is nil, [] is empty and not nil. An element that is not a
// string is ErrSlowPath. intern, when not nil, makes each string.
func (d *Scanner) Strings(intern func([]byte) string) ([]string, error) {
	switch d.Peek() {
	case 'n':
		return nil, d.Null()
	case '[':
		d.I++
	default:
		return nil, ErrSlowPath
	}
	out := []string{}
	if d.Peek() == ']' {
		d.I++
		return out, nil
	}
	for {
		if d.Peek() != '"' {
			return nil, ErrSlowPath
		}
		s, err := d.RawString()
		if err != nil {
			return nil, err
		}
		if intern != nil {
			out = append(out, intern(s))
		} else {
			out = append(out, string(s))
		}
		if done, err := d.next(']'); err != nil {
			return nil, err
		} else if done {
			return out, nil
		}
	}
}

// Bool reads true or false; anything else is ErrSlowPath.
func (d *Scanner) Bool() (bool, error) {
	d.WS()
	switch {
	case bytes.HasPrefix(d.B[d.I:], []byte("true")):
		d.I += 4
		return true, nil
	case bytes.HasPrefix(d.B[d.I:], []byte("false")):
		d.I += 5
		return false, nil
	}
	return false, ErrSlowPath
}

// Raw returns one value's bytes (not a copy), validated.
func (d *Scanner) Raw() ([]byte, error) {
	d.WS()
	start := d.I
	if err := d.Skip(); err != nil {
		return nil, err
	}
	return d.B[start:d.I:d.I], nil
}

// Other skips the value of a key the caller does not read; a key that
// encoding/json would match to one of the known field names (it ignores
// case) is ErrSlowPath.
func (d *Scanner) Other(k []byte, known ...string) error {
	ascii := true
	for _, c := range k {
		ascii = ascii && c < utf8.RuneSelf
	}
	for _, name := range known {
		// Only non-ASCII folds (the Kelvin sign, the long s) change length.
		if (!ascii || len(name) == len(k)) && bytes.EqualFold(k, []byte(name)) {
			return ErrSlowPath
		}
	}
	return d.Skip()
}

// Skip passes over one value, validating it as encoding/json does.
func (d *Scanner) Skip() error { return d.skip(0) }

func (d *Scanner) skip(depth int) error {
	if depth > MaxDepth {
		return ErrSlowPath
	}
	switch c := d.Peek(); c {
	case '"':
		return d.skipString()
	case '{':
		d.I++
		if d.Peek() == '}' {
			d.I++
			return nil
		}
		for {
			if d.Peek() != '"' {
				return ErrSyntax
			}
			if err := d.skipString(); err != nil {
				return err
			}
			if err := d.Expect(':'); err != nil {
				return err
			}
			if err := d.skip(depth + 1); err != nil {
				return err
			}
			if done, err := d.next('}'); err != nil {
				return err
			} else if done {
				return nil
			}
		}
	case '[':
		d.I++
		if d.Peek() == ']' {
			d.I++
			return nil
		}
		for {
			if err := d.skip(depth + 1); err != nil {
				return err
			}
			if done, err := d.next(']'); err != nil {
				return err
			} else if done {
				return nil
			}
		}
	case 't':
		return d.literal("true")
	case 'f':
		return d.literal("false")
	case 'n':
		return d.literal("null")
	default:
		return d.skipNumber()
	}
}

func (d *Scanner) literal(s string) error {
	if !bytes.HasPrefix(d.B[d.I:], []byte(s)) {
		return ErrSyntax
	}
	d.I += len(s)
	return nil
}

// skipString passes over a string at d.I, checking its escapes and that it
// holds no control character (invalid UTF-8 is replaced by encoding/json,
// not refused).
func (d *Scanner) skipString() error {
	i := d.I + 1
	for i < len(d.B) {
		if plain[d.B[i]] {
			i++
			continue
		}
		switch c := d.B[i]; {
		case c == '"':
			d.I = i + 1
			return nil
		case c < 0x20:
			return ErrSyntax
		case c == '\\':
			if i+1 >= len(d.B) {
				return ErrSyntax
			}
			switch d.B[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(d.B) {
					return ErrSyntax
				}
				for _, h := range d.B[i+2 : i+6] {
					if !isHex(h) {
						return ErrSyntax
					}
				}
				i += 6
			default:
				return ErrSyntax
			}
		default:
			i++
		}
	}
	return ErrSyntax
}

// plain marks the bytes that stand for themselves in a string: all but the
// quote, the backslash and the control characters.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// skipNumber passes over a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *Scanner) skipNumber() error {
	b, i := d.B, d.I
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = digits(b, i)
	default:
		return ErrSyntax
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return ErrSyntax
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return ErrSyntax
		}
		i = j
	}
	d.I = i
	return nil
}

func digits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}
