package policy

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the decoder. It must never panic; a
// failure must be a *policy.Error whose every line names the file; a success
// must be a policy that validates and whose hash is stable, both on re-parse
// and after a round trip through its own JSON encoding.
func FuzzParse(f *testing.F) {
	for _, pattern := range []string{"testdata/invalid/*.yaml", "../examples/*.yaml", "../examples/testdata/*.yaml"} {
		paths, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		for _, p := range paths {
			data, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add([]byte(minimalPolicy))
	f.Fuzz(func(t *testing.T, data []byte) {
		if docs, err := Documents("fuzz.yaml", data); err == nil && len(docs) == 0 {
			t.Fatalf("Documents found no document and no error")
		}
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			var perr *Error
			if !errors.As(err, &perr) || len(perr.Errs) == 0 {
				t.Fatalf("Parse error is %T with no field errors: %v", err, err)
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "fuzz.yaml: ") {
					t.Fatalf("error line does not name the file: %q", line)
				}
			}
			return
		}
		if errs := Validate(c.Policy); len(errs) > 0 {
			t.Fatalf("a parsed policy does not validate: %v", errs)
		}
		_ = Warnings(c.Policy) // must not panic on any valid policy
		_, _ = CheckResources(c.Policy, BuiltinResources())
		again, err := Parse("fuzz.yaml", data)
		if err != nil || again.Hash != c.Hash {
			t.Fatalf("re-parse: hash %s then %v (err %v)", c.Hash, again, err)
		}
		js, err := json.Marshal(c.Policy)
		if err != nil {
			t.Fatalf("a parsed policy does not marshal: %v", err)
		}
		round, err := Parse("round.json", js)
		if err != nil {
			t.Fatalf("the policy's own encoding does not parse: %v\n%s", err, js)
		}
		if round.Hash != c.Hash {
			t.Fatalf("hash %s changed to %s through its own encoding:\n%s", c.Hash, round.Hash, js)
		}
	})
}
