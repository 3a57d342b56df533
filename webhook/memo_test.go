package webhook

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestChargeMemo(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pod := func(uid, ns, name string) chargeKey {
		return chargeKey{UID: types.UID(uid), Resource: "pods", Namespace: ns, Name: name}
	}
	a := pod("a", "prod", "web-0")
	cases := []struct {
		name string
		run  func(m *chargeMemo) bool
		want bool
	}{
		{name: "an object never charged is not remembered",
			run: func(m *chargeMemo) bool { return m.charged(a, t0) }, want: false},
		{name: "a charged object is remembered within the ttl",
			run: func(m *chargeMemo) bool { m.remember(a, t0); return m.charged(a, t0.Add(time.Minute)) }, want: true},
		{name: "a charged object is forgotten after the ttl",
			run: func(m *chargeMemo) bool { m.remember(a, t0); return m.charged(a, t0.Add(2*time.Minute)) }, want: false},
		{name: "the same uid under another name is another object",
			run: func(m *chargeMemo) bool { m.remember(pod("a", "prod", "decoy"), t0); return m.charged(a, t0) }, want: false},
		{name: "the same uid in another namespace is another object",
			run: func(m *chargeMemo) bool { m.remember(pod("a", "dev", "web-0"), t0); return m.charged(a, t0) }, want: false},
		{name: "the same uid on another resource is another object",
			run: func(m *chargeMemo) bool {
				k := a
				k.Resource = "configmaps"
				m.remember(k, t0)
				return m.charged(a, t0)
			}, want: false},
		{name: "a full memo forgets rather than grows",
			run: func(m *chargeMemo) bool {
				for i := range 10 {
					m.remember(pod(fmt.Sprint(i), "prod", "p"), t0)
				}
				return len(m.seen) <= 4
			}, want: true},
		{name: "expired entries are swept when the memo fills",
			run: func(m *chargeMemo) bool {
				for i := range 4 {
					m.remember(pod(fmt.Sprint(i), "prod", "p"), t0)
				}
				m.remember(pod("new", "prod", "p"), t0.Add(3*time.Minute))
				return len(m.seen) == 1 && m.charged(pod("new", "prod", "p"), t0.Add(3*time.Minute))
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

func TestChargeKeysOfDifferentObjectsDiffer(t *testing.T) {
	base := chargeKey{UID: "u", Group: "apps", Resource: "deployments", Namespace: "prod", Name: "web"}
	for _, other := range []chargeKey{
		{UID: "u", Group: "", Resource: "deployments", Namespace: "prod", Name: "web"},
		{UID: "u", Group: "apps", Resource: "replicasets", Namespace: "prod", Name: "web"},
		{UID: "u", Group: "apps", Resource: "deployments", Namespace: "dev", Name: "web"},
		{UID: "u", Group: "apps", Resource: "deployments", Namespace: "prod", Name: "api"},
		{UID: "v", Group: "apps", Resource: "deployments", Namespace: "prod", Name: "web"},
	} {
		if other.onceKey() == base.onceKey() {
			t.Errorf("%+v and %+v share the store key %q", other, base, base.onceKey())
		}
	}
}
