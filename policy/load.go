package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"

	goyaml "go.yaml.in/yaml/v2"
	"k8s.io/apimachinery/pkg/util/validation/field"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// MaxFileBytes is the largest policy file accepted. Real policies are a few
// kilobytes; the cap keeps a wrong file (a log, a binary) from being read whole.
const MaxFileBytes = 1 << 20

// Error reports every problem found in one policy file, each with its field path.
type Error struct {
	File string
	Errs field.ErrorList
}

// wholeFile is the field path of a problem with the file as a whole (empty,
// too large, not YAML); Error prints only its detail after the file name.
const wholeFile = "<file>"

func (e *Error) Error() string {
	lines := make([]string, 0, len(e.Errs))
	for _, fe := range e.Errs {
		if fe.Field == wholeFile {
			lines = append(lines, e.File+": "+fe.Detail)
			continue
		}
		lines = append(lines, e.File+": "+fe.Error())
	}
	return strings.Join(lines, "\n")
}

func fileError(detail string) *field.Error {
	return &field.Error{Type: field.ErrorTypeInvalid, Field: wholeFile, BadValue: field.OmitValueType{}, Detail: detail}
}

// Load reads, decodes, defaults, validates and compiles the policy at path.
func Load(path string) (*Compiled, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("failed to open policy: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("failed to read policy %s: %w", path, err)
	}
	return Parse(filepath.Base(path), data)
}

// Parse decodes, defaults, validates and compiles one policy document. name is
// the file name used in error messages.
func Parse(name string, data []byte) (*Compiled, error) {
	p, err := Decode(name, data)
	if err != nil {
		return nil, err
	}
	SetDefaults(p)
	if errs := Validate(p); len(errs) > 0 {
		return nil, &Error{File: name, Errs: errs}
	}
	return compile(p, data)
}

// Decode strictly decodes a policy document without defaulting or validating
// it: unknown fields, duplicate keys, wrong types and a wrong apiVersion or
// kind are errors.
func Decode(name string, data []byte) (*DefenderPolicy, error) {
	fail := func(fe *field.Error) error {
		return &Error{File: name, Errs: field.ErrorList{fe}}
	}
	if len(data) > MaxFileBytes {
		return nil, fail(fileError(fmt.Sprintf("the file is larger than %d bytes (1 MiB); a policy is a few kilobytes: is this the right file?", MaxFileBytes)))
	}
	const empty = "the policy file is empty: it needs apiVersion, kind, metadata and spec"
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fail(fileError(empty))
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fail(fileError("invalid YAML: " + cleanYAMLError(err)))
	}
	js = bytes.TrimSpace(js)
	if bytes.Equal(js, []byte("null")) {
		return nil, fail(fileError(empty))
	}
	if !bytes.HasPrefix(js, []byte("{")) {
		return nil, fail(fileError("not a YAML mapping: a policy starts with apiVersion, kind, metadata and spec"))
	}
	if n := countDocuments(data); n > 1 {
		return nil, fail(fileError(fmt.Sprintf("holds %d YAML documents separated by ---; a policy file holds exactly one", n)))
	}
	p := &DefenderPolicy{}
	strict, err := sigsjson.UnmarshalStrict(js, p, sigsjson.DisallowUnknownFields, sigsjson.DisallowDuplicateFields)
	if err != nil {
		return nil, fail(decodeError(js, err))
	}
	var errs field.ErrorList
	for _, se := range strict {
		errs = append(errs, strictError(se))
	}
	if p.APIVersion != APIVersion {
		errs = append(errs, field.NotSupported(field.NewPath("apiVersion"), p.APIVersion, []string{APIVersion}))
	}
	if p.Kind != Kind {
		errs = append(errs, field.NotSupported(field.NewPath("kind"), p.Kind, []string{Kind}))
	}
	if len(errs) > 0 {
		return nil, &Error{File: name, Errs: errs}
	}
	return p, nil
}

// countDocuments counts the non-empty YAML documents in data. The YAML to JSON
// conversion reads only the first, so a second one would be silently ignored.
func countDocuments(data []byte) int {
	dec := goyaml.NewDecoder(bytes.NewReader(data))
	n := 0
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			// The first document decoded; a broken later one is still a later one.
			return n + 1
		}
		if v != nil {
			n++
		}
	}
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
		return "must be a whole number"
	case reflect.Float32, reflect.Float64:
		return "must be a number"
	case reflect.Bool:
		return "must be true or false"
	case reflect.String:
		return "must be a string"
	case reflect.Slice:
		return "must be a list, such as [a, b]"
	case reflect.Struct, reflect.Map, reflect.Pointer:
		return "must be a mapping of fields"
	}
	return "must be of type " + t.String()
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

var duplicateKey = regexp.MustCompile(`key (".*?") already set in map`)

func cleanYAMLError(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	msg = strings.TrimPrefix(msg, "yaml: ")
	msg = strings.TrimPrefix(msg, "unmarshal errors:")
	msg = duplicateKey.ReplaceAllString(msg, "duplicate key $1: each key may appear only once in a mapping")
	msg = strings.ReplaceAll(msg, "\n", " ")
	return strings.Join(strings.Fields(msg), " ")
}

// hashOf returns a short, stable hash of the defaulted policy, so two replicas
// can tell whether they run the same policy.
func hashOf(p *DefenderPolicy) string {
	b, err := json.Marshal(p)
	if err != nil {
		// A decoded policy always marshals; keep the raw bytes' hash meaningful anyway.
		b = []byte(err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}
