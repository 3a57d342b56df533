// Package testwait owns how unit tests wait for something another goroutine
// does: poll a condition until it holds, with a generous deadline, instead
// of sleeping a guessed time.
package testwait

import (
	"testing"
	"time"
)

// Timeout is how long Until waits before it fails the test.
const Timeout = 10 * time.Second

// Until polls cond every few milliseconds until it returns true, and fails t
// (t.Fatalf, so call it from the test's goroutine) with what it was waiting
// for if that takes longer than Timeout.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
