package webhook

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// chargeMemo remembers the objects whose deletion was admitted and charged
// recently.
//
// The API server may validate one DELETE several times: once in the update
// that sets a graceful deletion or finalizers, once in the storage delete, and
// again whenever its cached copy of the object turns out to be stale. Each call
// is a separate AdmissionReview with its own request UID, so without this memo
// one `kubectl delete pod` can take three tokens (seen against kube-apiserver
// 1.37). An object is deleted at most once, so its UID (oldObject.metadata.uid)
// keys the memo: a repeated call for an object already charged is admitted
// without charging again.
//
// The memo is per replica and saves a store call for the usual case, repeats
// reaching the same replica. The handler also passes the UID to the engine as
// Attributes.ChargeOnce, so a repeat that reaches another replica sharing the
// store is recognised by the store and not charged either.
type chargeMemo struct {
	ttl time.Duration
	max int

	mu    sync.Mutex
	seen  map[types.UID]time.Time // expiry
	sweep time.Time
}

func newChargeMemo(ttl time.Duration, max int) *chargeMemo {
	return &chargeMemo{ttl: ttl, max: max, seen: map[types.UID]time.Time{}}
}

// charged reports whether uid was remembered and has not expired at now.
func (m *chargeMemo) charged(uid types.UID, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	exp, ok := m.seen[uid]
	return ok && now.Before(exp)
}

// remember records that uid was charged at now. Expired entries are swept
// at most once per ttl, or when the memo is full; a full memo with nothing
// expired forgets everything rather than grow (repeats are then charged).
func (m *chargeMemo) remember(uid types.UID, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.seen) >= m.max || now.After(m.sweep) {
		for k, exp := range m.seen {
			if !now.Before(exp) {
				delete(m.seen, k)
			}
		}
		if len(m.seen) >= m.max {
			clear(m.seen)
		}
		m.sweep = now.Add(m.ttl)
	}
	m.seen[uid] = now.Add(m.ttl)
}
