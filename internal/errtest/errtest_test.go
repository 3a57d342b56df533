package errtest

import (
	"errors"
	"testing"
)

func TestWantPassesWhenTheErrorIsAsWanted(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want []string
	}{
		{name: "no error when none is wanted", err: nil, want: nil},
		{name: "an error holding every fragment", err: errors.New("spec.reason is required; no rate limit \"nope\""), want: []string{"spec.reason is required", `no rate limit "nope"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			Want(t, tc.err, tc.want...)
		})
	}
}
