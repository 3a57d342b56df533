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
	"reflect"
	"regexp"
	"slices"
	"strconv"
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
	return Parse(path, data)
}

// Parse decodes, defaults, validates and compiles one policy document. name is
// the file name used in error messages (the path as the user gave it).
//
// Every problem is reported at once: a value of the wrong type (limit: "10",
// window: 5, window: 1w) is reported and left out, the rest of the document
// is decoded, defaulted and validated, and validation's complaints about a
// field already reported as mistyped are dropped (they would be about the
// zero value standing in for it, not about what the user wrote).
func Parse(name string, data []byte) (*Compiled, error) {
	p, errs, mistyped := decode(data)
	if p == nil || !documentKindOK(p) {
		return nil, &Error{File: name, Errs: errs}
	}
	SetDefaults(p)
	for _, fe := range Validate(p) {
		if !underAny(fe.Field, mistyped) {
			errs = append(errs, fe)
		}
	}
	if len(errs) > 0 {
		return nil, &Error{File: name, Errs: errs}
	}
	return compile(p, data)
}

// documentKindOK says whether apiVersion and kind are a policy's: when they
// are not, the rest of the document is not a policy and is not validated.
func documentKindOK(p *DefenderPolicy) bool {
	return p.APIVersion == APIVersion && p.Kind == Kind
}

// underAny says whether the field path fp is one of paths or below one of them.
func underAny(fp string, paths []string) bool {
	for _, p := range paths {
		if rest, ok := strings.CutPrefix(fp, p); ok && (rest == "" || rest[0] == '.' || rest[0] == '[') {
			return true
		}
	}
	return false
}

// Decode strictly decodes a policy document without defaulting or validating
// it: unknown fields, duplicate keys, wrong types and a wrong apiVersion or
// kind are errors, all reported at once.
func Decode(name string, data []byte) (*DefenderPolicy, error) {
	p, errs, _ := decode(data)
	if len(errs) > 0 {
		return nil, &Error{File: name, Errs: errs}
	}
	return p, nil
}

// decode decodes data as far as it can. p is nil when the file as a whole is
// unusable (empty, too large, not YAML, not a mapping); otherwise p holds
// every well-typed value and errs every problem found. mistyped lists the
// field paths whose values were left out because of their type.
func decode(data []byte) (p *DefenderPolicy, errs field.ErrorList, mistyped []string) {
	fail := func(fe *field.Error) (*DefenderPolicy, field.ErrorList, []string) {
		return nil, field.ErrorList{fe}, nil
	}
	if len(data) > MaxFileBytes {
		return fail(fileError(fmt.Sprintf("the file is larger than %d bytes (1 MiB); a policy is a few kilobytes: is this the right file?", MaxFileBytes)))
	}
	const empty = "the policy file is empty: it needs apiVersion, kind, metadata and spec"
	if len(bytes.TrimSpace(data)) == 0 {
		return fail(fileError(empty))
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fail(fileError("invalid YAML: " + cleanYAMLError(err)))
	}
	js = bytes.TrimSpace(js)
	if bytes.Equal(js, []byte("null")) {
		return fail(fileError(empty))
	}
	if !bytes.HasPrefix(js, []byte("{")) {
		return fail(fileError("not a YAML mapping: a policy starts with apiVersion, kind, metadata and spec"))
	}
	if n := countDocuments(data); n > 1 {
		return fail(fileError(fmt.Sprintf("holds %d YAML documents separated by ---; a policy file holds exactly one", n)))
	}
	// Values of the wrong type stop encoding/json at the first one: find them
	// all first, report each, and decode the document without them.
	errs, mistyped, js = pruneMistyped(js)
	p = &DefenderPolicy{}
	strict, err := sigsjson.UnmarshalStrict(js, p, sigsjson.DisallowUnknownFields, sigsjson.DisallowDuplicateFields)
	if err != nil {
		return fail(decodeError(js, err))
	}
	for _, se := range strict {
		errs = append(errs, strictError(se))
	}
	if p.APIVersion != APIVersion {
		errs = append(errs, field.NotSupported(field.NewPath("apiVersion"), p.APIVersion, []string{APIVersion}))
	}
	if p.Kind != Kind {
		e := field.NotSupported(field.NewPath("kind"), p.Kind, []string{Kind})
		if p.Kind == "ConfigMap" {
			e.Detail += " (a ConfigMap manifest: policy validate and explain read the policy in its data; serve reads the policy file itself, as mounted from the ConfigMap)"
		}
		errs = append(errs, e)
	}
	return p, errs, mistyped
}

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
	b, err := json.Marshal(withoutLaterDefaults(p))
	if err != nil {
		// A decoded policy always marshals; keep the raw bytes' hash meaningful anyway.
		b = []byte(err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// Document is one policy found in a file: the file itself, or one data key of
// a ConfigMap manifest.
type Document struct {
	// Name names the document in messages: the path as given, followed by
	// ":data.KEY" for a ConfigMap key.
	Name string
	Data []byte
}

// Documents returns the policies held by the content of the file name: the
// content itself when it is a policy (or anything else, which Parse then
// reports), or, when it is a ConfigMap manifest (the form deploy/ ships), each
// data key whose name ends in .yaml or .yml or whose value is a
// DefenderPolicy, in key order. A ConfigMap without such a key is an error.
func Documents(name string, data []byte) ([]Document, error) {
	var head struct {
		APIVersion string            `yaml:"apiVersion"`
		Kind       string            `yaml:"kind"`
		Data       map[string]string `yaml:"data"`
	}
	// Content that is too large or not YAML is handed on whole: Parse reports it.
	whole := []Document{{Name: name, Data: data}}
	if len(data) > MaxFileBytes {
		return whole, nil
	}
	if goyaml.Unmarshal(data, &head) != nil {
		head.Kind = ""
	}
	if head.Kind != "ConfigMap" || head.APIVersion != "v1" {
		return whole, nil
	}
	keys := make([]string, 0, len(head.Data))
	for k := range head.Data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var docs []Document
	for _, k := range keys {
		v := head.Data[k]
		if strings.HasSuffix(k, ".yaml") || strings.HasSuffix(k, ".yml") || strings.Contains(v, "kind: "+Kind) {
			docs = append(docs, Document{Name: name + ":data." + k, Data: []byte(v)})
		}
	}
	if len(docs) == 0 {
		return nil, &Error{File: name, Errs: field.ErrorList{fileError(fmt.Sprintf(
			"a ConfigMap with no policy in its data: put the policy under a key ending in .yaml (keys found: %s)", strings.Join(keys, ", ")))}}
	}
	return docs, nil
}
