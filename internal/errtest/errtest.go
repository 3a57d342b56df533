// Package errtest owns how table tests check the error a call returned
// against the fragments of its message they expect.
package errtest

import (
	"strings"
	"testing"
)

// Want fails t unless err is what a test wants: nil when want is empty,
// otherwise an error whose message contains every fragment of want. An
// unexpected error, or a missing one, stops t (t.Fatal); each fragment the
// message lacks is reported (t.Errorf) and t goes on.
func Want(t testing.TB, err error, want ...string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatal("want an error")
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}
