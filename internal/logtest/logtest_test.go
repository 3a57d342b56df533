package logtest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestBufferKeepsEveryWriteFromConcurrentWriters(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fmt.Fprintf(&b, "line %d\n", i)
			_ = b.String()
		}()
	}
	wg.Wait()
	for i := range 8 {
		if want := fmt.Sprintf("line %d\n", i); !strings.Contains(b.String(), want) {
			t.Errorf("the buffer lacks %q; it holds %q", want, b.String())
		}
	}
}
