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
	"regexp"
	"slices"
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
	return compile(p), nil
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
