package proxy

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubedefender/kubedefender/policy"
)

func TestAQueueWaitEndsOnlyOnceArmed(t *testing.T) {
	const wait = 15 * time.Second
	for _, tc := range []struct {
		name    string
		step    time.Duration
		cancel  bool
		wantErr error
	}{
		{name: "the maximum wait passes", step: wait, wantErr: context.DeadlineExceeded},
		{name: "the client goes away", cancel: true, wantErr: context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			clk := clocktesting.NewFakeClock(time.Now())
			qw := &queueWait{Context: ctx}
			if qw.Done() != nil {
				t.Fatal("Done is set before arm: every dispatched request would pay for it")
			}
			disarm := qw.arm(clk, wait)
			defer disarm()
			clk.Step(wait - time.Nanosecond)
			if err := qw.Err(); err != nil {
				t.Fatalf("Err = %v before the wait passed", err)
			}
			clk.Step(tc.step)
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
		clk := clocktesting.NewFakeClock(time.Now())
		qw := &queueWait{Context: context.Background()}
		qw.arm(clk, wait)()
		if clk.HasWaiters() {
			t.Error("disarm left the timer running")
		}
		clk.Step(2 * wait)
		select {
		case <-qw.Done():
			t.Fatal("Done became ready after disarm")
		default:
		}
	})
}

// TestAPolicyChangesNoLevelUntilItCommits: PreparePolicy builds the levels
// of a new policy to the side; the running ones change only at commit, and
// a level that does not configure refuses the policy (the reload fails).
func TestAPolicyChangesNoLevelUntilItCommits(t *testing.T) {
	seatsOf := func(pl *priorityLevels) map[string]int {
		out := map[string]int{}
		for _, l := range pl.status() {
			out[l.Name] = l.Seats
		}
		return out
	}
	more := mustPolicy(t, strings.Replace(basePolicy, "concurrency: 2", "concurrency: 20", 1))
	broken := mustPolicy(t, strings.Replace(basePolicy, "concurrency: 2", "concurrency: 20", 1))
	broken.Policy.Spec.PriorityLevels[1].HandSize = 5 // more than its 4 queues: no dealer
	for _, tc := range []struct {
		name      string
		next      *policy.Compiled
		wantErr   string
		wantSeats map[string]int
	}{
		{name: "a good policy runs after its commit", next: more, wantSeats: map[string]int{"exempt": 0, "workload": 10, "catch-all": 10}},
		{name: "a level that does not configure refuses the policy", next: broken,
			wantErr: `failed to configure priority level "workload"`, wantSeats: map[string]int{"exempt": 0, "workload": 1, "catch-all": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pl, err := newPriorityLevels(clock.RealClock{}, time.Second, newMetrics())
			if err != nil {
				t.Fatal(err)
			}
			commit, err := pl.prepare(mustPolicy(t, basePolicy))
			if err != nil {
				t.Fatal(err)
			}
			commit()
			before := seatsOf(pl)

			commit, err = pl.prepare(tc.next)

			if got := seatsOf(pl); !maps.Equal(got, before) {
				t.Errorf("seats after prepare = %v, want the running %v", got, before)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("prepare = %v, want %q", err, tc.wantErr)
				}
				if commit != nil {
					t.Error("a refused policy came with a commit")
				}
			} else {
				if err != nil {
					t.Fatalf("prepare = %v", err)
				}
				commit()
			}
			if got := seatsOf(pl); !maps.Equal(got, tc.wantSeats) {
				t.Errorf("seats = %v, want %v", got, tc.wantSeats)
			}
		})
	}
}
