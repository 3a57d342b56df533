package proxy

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestAQueueWaitEndsOnlyOnceArmed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		wait    time.Duration
		cancel  bool
		wantErr error
	}{
		{name: "the maximum wait passes", wait: 10 * time.Millisecond, wantErr: context.DeadlineExceeded},
		{name: "the client goes away", wait: time.Hour, cancel: true, wantErr: context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			qw := &queueWait{Context: ctx}
			if qw.Done() != nil {
				t.Fatal("Done is set before arm: every dispatched request would pay for it")
			}
			disarm := qw.arm(tc.wait)
			defer disarm()
			if err := qw.Err(); err != nil {
				t.Fatalf("Err = %v before Done", err)
			}
			if tc.cancel {
				cancel()
			}
			select {
			case <-qw.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("Done never became ready")
			}
			if err := qw.Err(); !errors.Is(err, tc.wantErr) {
				t.Errorf("Err = %v, want %v", err, tc.wantErr)
			}
		})
	}
	t.Run("a disarmed wait never ends", func(t *testing.T) {
		qw := &queueWait{Context: context.Background()}
		qw.arm(10 * time.Millisecond)()
		select {
		case <-qw.Done():
			t.Fatal("Done became ready after disarm")
		case <-time.After(50 * time.Millisecond):
		}
	})
}
