package webhook

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type ctxKey struct{}

// lazyDeadline behaves as context.WithDeadline does, seen from the store.
func TestLazyDeadlineBehavesAsWithDeadline(t *testing.T) {
	future := time.Now().Add(time.Hour)
	cases := []struct {
		name string
		// parent returns the parent context and a function that cancels it
		// (nil: leave it).
		parent       func() (context.Context, context.CancelFunc)
		deadline     time.Time
		cancelParent bool
		release      bool
		wantDeadline time.Time
		wantErr      error
	}{
		{name: "a live context reports its deadline and no error", parent: background, deadline: future, wantDeadline: future},
		{name: "a deadline in the past is exceeded", parent: background, deadline: time.Unix(1, 0), wantDeadline: time.Unix(1, 0), wantErr: context.DeadlineExceeded},
		{name: "an earlier deadline of the parent is the deadline", deadline: future,
			parent: func() (context.Context, context.CancelFunc) {
				return context.WithDeadline(context.Background(), time.Unix(2, 0))
			}, wantDeadline: time.Unix(2, 0), wantErr: context.DeadlineExceeded},
		{name: "a cancelled parent cancels it", parent: cancellable, deadline: future, cancelParent: true, wantDeadline: future, wantErr: context.Canceled},
		{name: "a released context is cancelled", parent: background, deadline: future, release: true, wantDeadline: future, wantErr: context.Canceled},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			parent, cancel := tc.parent()
			defer cancel()
			ctx := newLazyDeadline(context.WithValue(parent, ctxKey{}, "v"), tc.deadline)
			if tc.cancelParent {
				cancel()
			}
			if tc.release {
				ctx.release()
			}
			if d, ok := ctx.Deadline(); !ok || !d.Equal(tc.wantDeadline) {
				t.Errorf("Deadline() = %v, %v; want %v", d, ok, tc.wantDeadline)
			}
			if v := ctx.Value(ctxKey{}); v != "v" {
				t.Errorf("Value = %v, want the parent's", v)
			}
			if tc.wantErr != nil {
				<-ctx.Done() // a context that is done now, or the test hangs
			}
			if err := ctx.Err(); !errors.Is(err, tc.wantErr) {
				t.Errorf("Err() = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil {
				select {
				case <-ctx.Done():
					t.Error("Done is closed before the deadline")
				default:
				}
			}
			ctx.release()
			if !errors.Is(ctx.Err(), context.Canceled) && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				t.Errorf("after release Err() = %v, want it done", ctx.Err())
			}
		})
	}
}

// Callers on several goroutines get the one Done channel.
func TestLazyDeadlineDoneIsOneChannel(t *testing.T) {
	ctx := newLazyDeadline(context.Background(), time.Now().Add(time.Hour))
	defer ctx.release()
	chans := make([]<-chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range chans {
		wg.Go(func() { chans[i] = ctx.Done() })
	}
	wg.Wait()
	for _, c := range chans[1:] {
		if c != chans[0] {
			t.Fatal("Done returned different channels")
		}
	}
}

func background() (context.Context, context.CancelFunc) { return context.Background(), func() {} }

func cancellable() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}
