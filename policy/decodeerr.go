package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// pruneMistyped walks the JSON document js against the policy's types and
// reports every value that would not decode into its field (a string for a
// number, a number for a duration, a bad duration string, a scalar for a
// list). It returns the document without those values (js itself when all
// are well typed, so the strict decoder still sees keys in document order).
func pruneMistyped(js []byte) (errs field.ErrorList, mistyped []string, out []byte) {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber() // keep int64 values exact through the round trip
	var tree any
	if dec.Decode(&tree) != nil {
		return nil, nil, js
	}
	report := func(path string, t reflect.Type, v any) {
		mistyped = append(mistyped, path)
		var bad any = field.OmitValueType{}
		switch x := v.(type) {
		case json.Number:
			if i, err := x.Int64(); err == nil {
				bad = i
			} else if f, err := x.Float64(); err == nil {
				bad = f
			}
			v = bad
		case string, bool:
			bad = x
		}
		errs = append(errs, &field.Error{Type: field.ErrorTypeInvalid, Field: path, BadValue: bad, Detail: typeDetail(t, v)})
	}
	tree, _ = prune(tree, reflect.TypeFor[DefenderPolicy](), "", report)
	if len(errs) == 0 {
		return nil, nil, js
	}
	b, err := json.Marshal(tree)
	if err != nil {
		return errs, mistyped, js
	}
	return errs, mistyped, b
}

// prune checks v against t and returns what to keep of it; keep is false
// when v itself does not fit t (report has been called for it). Struct
// fields are visited in declaration order, so reports come in a stable
// order; unknown keys are kept for the strict decoder to report.
func prune(v any, t reflect.Type, path string, report func(path string, t reflect.Type, v any)) (kept any, keep bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if v == nil {
		return nil, true // null decodes into anything as its zero value
	}
	join := func(key string) string {
		if path == "" {
			return key
		}
		return path + "." + key
	}
	if t == durationType {
		if s, ok := v.(string); ok {
			if _, ok := parseDuration(s); ok {
				return v, true
			}
		}
		report(path, t, v)
		return nil, false
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			report(path, t, v)
			return nil, false
		}
		for i := range t.NumField() {
			f := t.Field(i)
			name := jsonName(f)
			fv, present := m[name]
			if name == "" || name == "-" || !present {
				continue
			}
			if nv, ok := prune(fv, f.Type, join(name), report); ok {
				m[name] = nv
			} else {
				delete(m, name)
			}
		}
		return m, true
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			report(path, t, v)
			return nil, false
		}
		for i := range l {
			if nv, ok := prune(l[i], t.Elem(), fmt.Sprintf("%s[%d]", path, i), report); ok {
				l[i] = nv
			} else {
				l[i] = nil // keep the indexes of the items after it
			}
		}
		return l, true
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			report(path, t, v)
			return nil, false
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if nv, ok := prune(m[k], t.Elem(), join(k), report); ok {
				m[k] = nv
			} else {
				delete(m, k)
			}
		}
		return m, true
	}
	b, err := json.Marshal(v)
	if err == nil {
		err = json.Unmarshal(b, reflect.New(t).Interface())
	}
	if err != nil {
		report(path, t, v)
		return nil, false
	}
	return v, true
}

// strictError turns `unknown field "spec.budgets[0].foo"` into a field error
// with that path, naming the fields that are allowed there.
func strictError(err error) *field.Error {
	msg := err.Error()
	for _, prefix := range []string{"unknown field ", "duplicate field "} {
		if rest, ok := strings.CutPrefix(msg, prefix); ok {
			path := strings.Trim(rest, `"`)
			detail := strings.TrimSpace(prefix)
			if prefix == "unknown field " {
				detail += unknownFieldHint(path)
			}
			return &field.Error{Type: field.ErrorTypeForbidden, Field: path, Detail: detail}
		}
	}
	return fileError(msg)
}

// unknownFieldHint suggests the field the author probably meant and lists the
// fields allowed next to it.
func unknownFieldHint(path string) string {
	segs := strings.Split(path, ".")
	known := fieldsOf(reflect.TypeFor[DefenderPolicy](), segs[:len(segs)-1])
	if len(known) == 0 {
		return " (check the spelling against the policy reference)"
	}
	bad := segs[len(segs)-1]
	hint := ""
	best := 3 // suggest only close names
	for _, k := range known {
		if d := editDistance(strings.ToLower(bad), strings.ToLower(k)); d < best {
			best, hint = d, fmt.Sprintf(": did you mean %q?", k)
		}
	}
	return hint + " (allowed here: " + strings.Join(known, ", ") + ")"
}

// fieldsOf returns the JSON names of the struct found by following path (JSON
// names, list indexes ignored) from t, or nil.
func fieldsOf(t reflect.Type, path []string) []string {
	deref := func(t reflect.Type) reflect.Type {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		return t
	}
	t = deref(t)
	for _, seg := range path {
		if i := strings.IndexByte(seg, '['); i >= 0 {
			seg = seg[:i]
		}
		if t.Kind() != reflect.Struct {
			return nil
		}
		found := false
		for i := range t.NumField() {
			if jsonName(t.Field(i)) == seg {
				t, found = deref(t.Field(i).Type), true
				break
			}
		}
		if !found {
			return nil
		}
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var names []string
	for i := range t.NumField() {
		if n := jsonName(t.Field(i)); n != "" && n != "-" {
			names = append(names, n)
		}
	}
	return names
}

func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	return name
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// decodeError reports a type mismatch with the full path (list indexes
// included) and the value of the offending field. encoding/json names the
// field without indexes ("spec.budgets.windows.limit"), so the document is
// walked to find the first value at that path that does not decode.
func decodeError(js []byte, err error) *field.Error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		path, raw, found := locate(js, te)
		if !found {
			return &field.Error{Type: field.ErrorTypeInvalid, Field: te.Field, BadValue: field.OmitValueType{}, Detail: typeDetail(te.Type, nil)}
		}
		var v any
		if json.Unmarshal(raw, &v) != nil {
			v = nil
		}
		var bad any = field.OmitValueType{}
		switch v.(type) {
		case string, float64, bool:
			bad = v
		case nil:
			bad = "null"
		}
		return &field.Error{Type: field.ErrorTypeInvalid, Field: path, BadValue: bad, Detail: typeDetail(te.Type, v)}
	}
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "json: ")
	msg = strings.TrimPrefix(msg, "error unmarshaling JSON: ")
	return fileError(msg)
}

var durationType = reflect.TypeFor[Duration]()

// typeDetail says what a field of type t must be; v is the value found there.
func typeDetail(t reflect.Type, v any) string {
	if t == durationType {
		if s, ok := v.(string); ok {
			return durationProblem(s)
		}
		return `must be a duration string such as "90s", "5m", "1h" or "1d"`
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if s, ok := v.(string); ok && isNumber(s) {
			return "must be a whole number, written without quotes"
		}
		return "must be a whole number"
	case reflect.Float32, reflect.Float64:
		if s, ok := v.(string); ok && isNumber(s) {
			return "must be a number, written without quotes"
		}
		return "must be a number"
	case reflect.Bool:
		return "must be true or false"
	case reflect.String:
		switch v.(type) {
		case bool:
			return "must be a string: YAML reads an unquoted yes, no, on, off, y, n, true or false as a boolean, so quote it"
		case int64, float64:
			return "must be a string: quote it"
		}
		return "must be a string"
	case reflect.Slice:
		return "must be a list, such as [a, b]"
	case reflect.Struct, reflect.Map, reflect.Pointer:
		return "must be a mapping of fields"
	}
	return "must be of type " + t.String()
}

// isNumber says whether s, quoted in the file, would be a number without quotes.
func isNumber(s string) bool {
	_, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	return err == nil
}

// locate walks js in document order and returns the path (with list indexes)
// and raw text of the first value at te.Field that does not decode into te.Type.
func locate(js []byte, te *json.UnmarshalTypeError) (path string, raw json.RawMessage, found bool) {
	walkJSON(js, "", "", func(p, plain string, r json.RawMessage) bool {
		if plain != te.Field {
			return true
		}
		if json.Unmarshal(r, reflect.New(te.Type).Interface()) == nil {
			return true
		}
		path, raw, found = p, r, true
		return false
	})
	return path, raw, found
}

// walkJSON calls visit for every value in raw with its path (with and without
// list indexes); visit returns false to stop. It reports whether to go on.
func walkJSON(raw json.RawMessage, path, plain string, visit func(path, plain string, raw json.RawMessage) bool) bool {
	if path != "" && !visit(path, plain, raw) {
		return false
	}
	join := func(a, b string) string {
		if a == "" {
			return b
		}
		return a + "." + b
	}
	raw = bytes.TrimSpace(raw)
	switch {
	case bytes.HasPrefix(raw, []byte("{")):
		dec := json.NewDecoder(bytes.NewReader(raw))
		if _, err := dec.Token(); err != nil {
			return true
		}
		for dec.More() {
			tok, err := dec.Token()
			key, ok := tok.(string)
			if err != nil || !ok {
				return true
			}
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				return true
			}
			if !walkJSON(v, join(path, key), join(plain, key), visit) {
				return false
			}
		}
	case bytes.HasPrefix(raw, []byte("[")):
		var items []json.RawMessage
		if json.Unmarshal(raw, &items) != nil {
			return true
		}
		for i, v := range items {
			if !walkJSON(v, fmt.Sprintf("%s[%d]", path, i), plain, visit) {
				return false
			}
		}
	}
	return true
}
