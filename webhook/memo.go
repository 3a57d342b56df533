package webhook

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// chargeKey names one object whose deletion was charged: its UID and where it
// lives. The UID alone is not enough: the handler only trusts what a review
// says about the object, so a review carrying a real pod's UID under another
// name, namespace or resource must not mark that pod as charged.
type chargeKey struct {
	UID       types.UID
	Group     string
	Resource  string
	Namespace string
	Name      string
}

// onceKey is the key's form for limiter.Attributes.ChargeOnce, shared by every
// replica through the store. Kubernetes names, namespaces and resources never
// hold a "/" (nor does a UID), so the form is unambiguous.
func (k chargeKey) onceKey() string {
	return "delete/" + k.Group + "/" + k.Resource + "/" + k.Namespace + "/" + k.Name + "/" + string(k.UID)
}

// chargeMemo remembers the objects whose deletion the engine admitted and
// charged recently.
//
// The API server may validate one DELETE several times: once in the update
// that sets a graceful deletion or finalizers, once in the storage delete, and
// again whenever its cached copy of the object turns out to be stale. Each call
// is a separate AdmissionReview with its own request UID, so without this memo
// one `kubectl delete pod` can take three tokens (seen against kube-apiserver
// 1.37). An object is deleted at most once, so its UID (oldObject.metadata.uid)
// with its resource, namespace and name keys the memo: a repeated call for an
// object already charged is admitted without charging again.
//
// Only charges are remembered: a delete that no budget matched, that was
// denied, dry run, or not judged in time records nothing, so nothing but a
// real charge can make a later delete of the object free.
//
// The memo is per replica and saves a store call for the usual case, repeats
// reaching the same replica. The handler also passes the key to the engine as
// Attributes.ChargeOnce, so a repeat that reaches another replica sharing the
// store is recognised by the store and not charged either.
type chargeMemo struct {
	ttl time.Duration
	max int

	mu    sync.Mutex
	seen  map[chargeKey]time.Time // expiry
	sweep time.Time
}

func newChargeMemo(ttl time.Duration, max int) *chargeMemo {
	return &chargeMemo{ttl: ttl, max: max, seen: map[chargeKey]time.Time{}}
}

// charged reports whether k was remembered and has not expired at now.
func (m *chargeMemo) charged(k chargeKey, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	exp, ok := m.seen[k]
	return ok && now.Before(exp)
}

// remember records that k was charged at now. Expired entries are swept
// at most once per ttl, or when the memo is full; a full memo with nothing
// expired forgets everything rather than grow (repeats are then charged).
func (m *chargeMemo) remember(k chargeKey, now time.Time) {
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
	m.seen[k] = now.Add(m.ttl)
}
