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
	"strings"

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

func (e *Error) Error() string {
	lines := make([]string, 0, len(e.Errs))
	for _, fe := range e.Errs {
		lines = append(lines, e.File+": "+fe.Error())
	}
	return strings.Join(lines, "\n")
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
	fail := func(path *field.Path, detail string) error {
		return &Error{File: name, Errs: field.ErrorList{field.Invalid(path, nil, detail)}}
	}
	if len(data) > MaxFileBytes {
		return nil, &Error{File: name, Errs: field.ErrorList{field.TooLong(field.NewPath("<file>"), "", MaxFileBytes)}}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &Error{File: name, Errs: field.ErrorList{field.Required(field.NewPath("<file>"), "the policy file is empty")}}
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, &Error{File: name, Errs: field.ErrorList{field.Invalid(field.NewPath("<file>"), nil, cleanYAMLError(err))}}
	}
	if !bytes.HasPrefix(bytes.TrimSpace(js), []byte("{")) {
		return nil, fail(field.NewPath("<file>"), "not a YAML mapping: a policy starts with apiVersion, kind, metadata and spec")
	}
	p := &DefenderPolicy{}
	strict, err := sigsjson.UnmarshalStrict(js, p, sigsjson.DisallowUnknownFields, sigsjson.DisallowDuplicateFields)
	if err != nil {
		return nil, &Error{File: name, Errs: field.ErrorList{decodeError(err)}}
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

// strictError turns `unknown field "spec.budgets[0].foo"` into a field error
// with that path.
func strictError(err error) *field.Error {
	msg := err.Error()
	for _, prefix := range []string{"unknown field ", "duplicate field "} {
		if rest, ok := strings.CutPrefix(msg, prefix); ok {
			path := strings.Trim(rest, `"`)
			what := strings.TrimSpace(prefix)
			return &field.Error{Type: field.ErrorTypeForbidden, Field: path, Detail: what + " (check the spelling against the policy reference)"}
		}
	}
	return field.Invalid(field.NewPath("<file>"), nil, msg)
}

// decodeError reports a type mismatch with the path of the offending field.
func decodeError(err error) *field.Error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		path := te.Field
		if path == "" {
			path = "<file>"
		}
		return &field.Error{Type: field.ErrorTypeInvalid, Field: path, BadValue: field.OmitValueType{},
			Detail: fmt.Sprintf("must be of type %s, not %s", jsonTypeName(te.Type.Kind().String()), te.Value)}
	}
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "json: ")
	msg = strings.TrimPrefix(msg, "error unmarshaling JSON: ")
	return field.Invalid(field.NewPath("<file>"), nil, msg)
}

func jsonTypeName(kind string) string {
	switch {
	case strings.HasPrefix(kind, "int"), strings.HasPrefix(kind, "uint"):
		return "integer"
	case strings.HasPrefix(kind, "float"):
		return "number"
	case kind == "slice":
		return "list"
	case kind == "struct", kind == "map":
		return "mapping"
	}
	return kind
}

func cleanYAMLError(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	msg = strings.TrimPrefix(msg, "yaml: ")
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
