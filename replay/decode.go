package replay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// decodeEvent decodes one audit event line into ev. It reads only the
// fields replay needs and skips the rest without building them: on the
// recorded lines 12.7µs a line against 29µs for encoding/json into the same
// struct and 41µs into k8s.io/apiserver's audit/v1.Event (BenchmarkDecode);
// an EventList, or anything this walker does not expect, goes through
// encoding/json instead, so both accept the same input (FuzzDecodeEvent).
func decodeEvent(line []byte, ev *event, in interner) error {
	if err := decodeAny(line, ev, in); err != nil {
		return err
	}
	// Only a deletecollection's response body is read (for its items);
	// others (a list's can be megabytes) are not kept.
	if ev.Verb != "deletecollection" {
		ev.Response = nil
	} else {
		ev.Response = bytes.Clone(ev.Response)
	}
	return nil
}

// decodeAny decodes line into ev; ev.Response may point into line.
func decodeAny(line []byte, ev *event, in interner) error {
	d := walker{b: line, in: in}
	if err := d.event(ev); err != nil {
		if errors.Is(err, errSlowPath) {
			*ev = event{}
			return json.Unmarshal(line, ev)
		}
		// Let encoding/json word the error (it also catches what the
		// walker would have accepted).
		*ev = event{}
		if jerr := json.Unmarshal(line, ev); jerr != nil {
			return jerr
		}
		return nil
	}
	return nil
}

var (
	errSlowPath = errors.New("use encoding/json")
	errSyntax   = errors.New("invalid JSON")
)

type walker struct {
	b []byte
	i int
	// in interns the strings that repeat from line to line (verbs, users,
	// User-Agents, namespaces): fewer allocations, less heap. May be nil.
	in interner
}

// interner maps strings to one copy of each, up to maxInterned of them.
type interner map[string]string

const maxInterned = 8192

func (in interner) get(b []byte) string {
	if s, ok := in[string(b)]; ok {
		return s
	}
	s := string(b)
	if in != nil && len(in) < maxInterned {
		in[s] = s
	}
	return s
}

func (d *walker) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *walker) peek() byte {
	d.ws()
	if d.i >= len(d.b) {
		return 0
	}
	return d.b[d.i]
}

func (d *walker) expect(c byte) error {
	if d.peek() != c {
		return errSyntax
	}
	d.i++
	return nil
}

// object calls field for each key of an object; field must consume the value.
func (d *walker) object(field func(key []byte) error) error {
	if err := d.expect('{'); err != nil {
		return err
	}
	if d.peek() == '}' {
		d.i++
		return nil
	}
	for {
		key, err := d.rawString()
		if err != nil {
			return err
		}
		if err := d.expect(':'); err != nil {
			return err
		}
		if err := field(key); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.i++
		case '}':
			d.i++
			return nil
		default:
			return errSyntax
		}
	}
}

// rawString returns the bytes between the quotes of a string without
// escapes; a string with escapes takes the slow path.
func (d *walker) rawString() ([]byte, error) {
	if d.peek() != '"' {
		return nil, errSyntax
	}
	start := d.i + 1
	i := bytes.IndexByte(d.b[start:], '"')
	if i < 0 {
		return nil, errSyntax
	}
	s := d.b[start : start+i]
	if bytes.IndexByte(s, '\\') >= 0 {
		return nil, errSlowPath
	}
	high := false
	for _, c := range s {
		if c < 0x20 {
			return nil, errSyntax
		}
		high = high || c >= utf8.RuneSelf
	}
	if high && !utf8.Valid(s) {
		return nil, errSlowPath // encoding/json replaces invalid UTF-8
	}
	d.i = start + i + 1
	return s, nil
}

func (d *walker) str() (string, error) {
	if d.peek() == 'n' {
		return "", d.null()
	}
	s, err := d.rawString()
	return string(s), err
}

// istr is str for a value that repeats across lines.
func (d *walker) istr() (string, error) {
	if d.peek() == 'n' {
		return "", d.null()
	}
	s, err := d.rawString()
	if err != nil {
		return "", err
	}
	return d.in.get(s), nil
}

func (d *walker) null() error {
	if !bytes.HasPrefix(d.b[d.i:], []byte("null")) {
		return errSyntax
	}
	d.i += 4
	return nil
}

func (d *walker) strings() ([]string, error) {
	if d.peek() == 'n' {
		return nil, d.null()
	}
	if err := d.expect('['); err != nil {
		return nil, err
	}
	out := []string{}
	if d.peek() == ']' {
		d.i++
		return out, nil
	}
	for {
		s, err := d.istr()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
		switch d.peek() {
		case ',':
			d.i++
		case ']':
			d.i++
			return out, nil
		default:
			return nil, errSyntax
		}
	}
}

func (d *walker) time() (time.Time, error) {
	if d.peek() == 'n' {
		return time.Time{}, d.null()
	}
	s, err := d.rawString()
	if err != nil {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339Nano, string(s))
	if err != nil {
		return time.Time{}, errSlowPath
	}
	return t, nil
}

// skip passes over one value, checking only that it is well nested.
func (d *walker) skip() error {
	switch c := d.peek(); c {
	case '"':
		d.i++
		for d.i < len(d.b) {
			switch d.b[d.i] {
			case '\\':
				d.i += 2
				continue
			case '"':
				d.i++
				return nil
			}
			d.i++
		}
		return errSyntax
	case '{', '[':
		depth := 0
		for d.i < len(d.b) {
			switch d.b[d.i] {
			case '"':
				if err := d.skip(); err != nil {
					return err
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					d.i++
					return nil
				}
			}
			d.i++
		}
		return errSyntax
	case 0:
		return errSyntax
	default:
		start := d.i
		for d.i < len(d.b) {
			switch d.b[d.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				if d.i == start {
					return errSyntax
				}
				return nil
			}
			d.i++
		}
		return nil
	}
}

// raw returns one value's bytes (not a copy).
func (d *walker) raw() (json.RawMessage, error) {
	d.ws()
	start := d.i
	if err := d.skip(); err != nil {
		return nil, err
	}
	return d.b[start:d.i:d.i], nil
}

func (d *walker) user(u *userInfo) error {
	return d.object(func(k []byte) (err error) {
		switch string(k) {
		case "username":
			u.Username, err = d.istr()
		case "groups":
			u.Groups, err = d.strings()
		default:
			err = d.other(k, "username", "groups")
		}
		return err
	})
}

func (d *walker) event(ev *event) error {
	err := d.object(func(k []byte) (err error) {
		switch string(k) {
		case "kind":
			ev.Kind, err = d.istr()
			if ev.Kind == "EventList" {
				return errSlowPath
			}
		case "auditID":
			ev.AuditID, err = d.str()
		case "stage":
			ev.Stage, err = d.istr()
		case "verb":
			ev.Verb, err = d.istr()
		case "requestURI":
			ev.URI, err = d.str()
		case "userAgent":
			ev.UserAgent, err = d.istr()
		case "user":
			err = d.user(&ev.User)
		case "impersonatedUser":
			if d.peek() == 'n' {
				return d.null()
			}
			ev.Impersona = &userInfo{}
			err = d.user(ev.Impersona)
		case "objectRef":
			if d.peek() == 'n' {
				return d.null()
			}
			ev.ObjectRef = &objectRef{}
			r := ev.ObjectRef
			err = d.object(func(k []byte) (err error) {
				switch string(k) {
				case "resource":
					r.Resource, err = d.istr()
				case "namespace":
					r.Namespace, err = d.istr()
				case "name":
					r.Name, err = d.str()
				case "apiGroup":
					r.APIGroup, err = d.istr()
				case "subresource":
					r.Subresource, err = d.istr()
				default:
					err = d.other(k, "resource", "namespace", "name", "apiGroup", "subresource")
				}
				return err
			})
		case "responseStatus":
			if d.peek() == 'n' {
				return d.null()
			}
			ev.Status = &status{}
			st := ev.Status
			err = d.object(func(k []byte) (err error) {
				switch string(k) {
				case "code":
					d.ws()
					start := d.i
					if err := d.skip(); err != nil {
						return err
					}
					n, perr := strconv.Atoi(string(d.b[start:d.i]))
					if perr != nil {
						return errSlowPath
					}
					st.Code = n
				case "message":
					st.Message, err = d.str()
				default:
					err = d.other(k, "code", "message")
				}
				return err
			})
		case "responseObject":
			if d.peek() == 'n' {
				return d.null()
			}
			ev.Response, err = d.raw()
		case "requestReceivedTimestamp":
			ev.Received, err = d.time()
		case "stageTimestamp":
			ev.StageTime, err = d.time()
		case "annotations":
			if d.peek() == 'n' {
				return d.null()
			}
			err = d.object(func(k []byte) (err error) {
				if string(k) == annotationDecision {
					ev.Annotations.Decision, err = d.istr()
					return err
				}
				return d.other(k, annotationDecision)
			})
		case "items":
			return errSlowPath
		default:
			err = d.other(k, eventKeys...)
		}
		return err
	})
	if err != nil {
		return err
	}
	if d.peek() != 0 {
		return fmt.Errorf("%w: data after the event", errSyntax)
	}
	return nil
}

var eventKeys = []string{"kind", "auditID", "stage", "verb", "requestURI", "userAgent", "user", "impersonatedUser",
	"objectRef", "responseStatus", "responseObject", "requestReceivedTimestamp", "stageTimestamp", "annotations", "items"}

// other skips the value of a key the walker does not read; a key that
// encoding/json would match to a field (it ignores case) takes the slow path.
func (d *walker) other(k []byte, known ...string) error {
	ascii := true
	for _, c := range k {
		ascii = ascii && c < utf8.RuneSelf
	}
	for _, name := range known {
		// Only non-ASCII folds (the Kelvin sign, the long s) change length.
		if (!ascii || len(name) == len(k)) && bytes.EqualFold(k, []byte(name)) {
			return errSlowPath
		}
	}
	return d.skip()
}
