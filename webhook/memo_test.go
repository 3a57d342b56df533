package webhook

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestChargeMemo(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		run  func(m *chargeMemo) bool
		want bool
	}{
		{name: "an object never charged is not remembered",
			run: func(m *chargeMemo) bool { return m.charged("a", t0) }, want: false},
		{name: "a charged object is remembered within the ttl",
			run: func(m *chargeMemo) bool { m.remember("a", t0); return m.charged("a", t0.Add(time.Minute)) }, want: true},
		{name: "a charged object is forgotten after the ttl",
			run: func(m *chargeMemo) bool { m.remember("a", t0); return m.charged("a", t0.Add(2*time.Minute)) }, want: false},
		{name: "a full memo forgets rather than grows",
			run: func(m *chargeMemo) bool {
				for i := range 10 {
					m.remember(types.UID(fmt.Sprint(i)), t0)
				}
				return len(m.seen) <= 4
			}, want: true},
		{name: "expired entries are swept when the memo fills",
			run: func(m *chargeMemo) bool {
				for i := range 4 {
					m.remember(types.UID(fmt.Sprint(i)), t0)
				}
				m.remember("new", t0.Add(3*time.Minute))
				return len(m.seen) == 1 && m.charged("new", t0.Add(3*time.Minute))
			}, want: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.run(newChargeMemo(2*time.Minute, 4)); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
