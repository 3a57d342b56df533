// Package logtest owns the log sink tests hand to code that logs from other
// goroutines: a buffer safe to write and read at the same time.
package logtest

import (
	"bytes"
	"sync"
)

// Buffer is an io.Writer a test reads (String) while the code under test
// writes to it from any goroutine. The zero value is ready to use.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p; it never fails.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
