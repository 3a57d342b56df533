package webhook

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// tricklingBody delivers send bytes of a body in reads of at most step
// bytes, then fails as a read timeout would (or ends, when complete). At
// each read it checks what the buffer it reads into holds (what was
// delivered so far plus the room it is offered) against bound.
type tricklingBody struct {
	send, step, sent int
	complete         bool
	// heldOver is set at the first read where the buffer held more than
	// bound(sent).
	bound    func(sent int) int
	heldOver string
}

var errStalled = errors.New("the caller stopped sending (read timeout)")

func (b *tricklingBody) Read(p []byte) (int, error) {
	held := b.sent + len(p)
	if b.heldOver == "" && held > b.bound(b.sent) {
		b.heldOver = fmt.Sprintf("the buffer held %d bytes after %d arrived", held, b.sent)
	}
	if b.sent == b.send {
		if b.complete {
			return 0, io.EOF
		}
		return 0, errStalled
	}
	n := min(len(p), b.step, b.send-b.sent)
	for i := range n {
		p[i] = ' '
	}
	b.sent += n
	return n, nil
}

// A review body is held in a buffer that grows with what arrived, whatever
// Content-Length declared: a caller declaring 7 MiB and sending a byte pins
// a chunk, not 7 MiB, for as long as it stalls.
func TestReadBodyHoldsOnlyWhatArrived(t *testing.T) {
	// The most a buffer may hold once n bytes arrived: n, a quarter more,
	// and one chunk (the pooled buffer a read starts from is smaller).
	bound := func(n int) int { return n + n/4 + bodyChunk }
	cases := []struct {
		name          string
		contentLength int64 // -1: unknown (chunked)
		send, step    int
		complete      bool
	}{
		{name: "a body declared at the cap that sends one byte holds one chunk", contentLength: DefaultMaxBodyBytes, send: 1, step: 1},
		{name: "a body declared at the cap that sends 100 KiB holds about 100 KiB", contentLength: DefaultMaxBodyBytes, send: 100 << 10, step: 4 << 10},
		{name: "a body declared at the cap that sends 1 MiB in small reads holds about 1 MiB", contentLength: DefaultMaxBodyBytes, send: 1 << 20, step: 1 << 10},
		{name: "a complete body of the declared length is read whole", contentLength: 3 << 20, send: 3 << 20, step: 64 << 10, complete: true},
		{name: "a complete body of unknown length is read whole", contentLength: -1, send: 2 << 20, step: 32 << 10, complete: true},
		{name: "an empty body is read", contentLength: 0, complete: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := &tricklingBody{send: tc.send, step: tc.step, complete: tc.complete, bound: bound}
			r := httptest.NewRequest(http.MethodPost, Path, nil)
			r.Body, r.ContentLength = io.NopCloser(body), tc.contentLength
			got, err := readBody(r, make([]byte, 0, 16<<10))
			if tc.complete && (err != nil || len(got) != tc.send) {
				t.Errorf("read %d bytes, err %v; want all %d", len(got), err, tc.send)
			}
			if !tc.complete && !errors.Is(err, errStalled) {
				t.Errorf("err = %v, want the stall", err)
			}
			if body.heldOver != "" {
				t.Errorf("%s (declared %d): the buffer outgrew what arrived", body.heldOver, tc.contentLength)
			}
			if cap(got) > bound(len(got)) {
				t.Errorf("the body of %d bytes is returned in a buffer of %d", len(got), cap(got))
			}
			if tc.complete && tc.contentLength > 0 && cap(got) > int(tc.contentLength)+1 {
				t.Errorf("a body of the declared %d bytes is returned in a buffer of %d, want at most one byte more", tc.contentLength, cap(got))
			}
		})
	}
}
