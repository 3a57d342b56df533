package cascade

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
)

// rootMemory remembers charged roots for a short time so that the
// controllers' follow-ups are free. It holds at most max entries, each for
// ttl; when full, the entry that expires first is forgotten.
type rootMemory struct {
	mu      sync.Mutex
	clock   clock.PassiveClock
	ttl     time.Duration
	max     int
	entries map[string]*memEntry
	queue   []queued // in expiry order (ttl is fixed, so insertion order)
}

type memEntry struct {
	deleted bool           // a charged delete removed the object
	credit  int            // pods a charged scale-down paid for, not yet spent
	taints  []corev1.Taint // NoExecute taints charged on a node
	expires time.Time
}

type queued struct {
	key     string
	expires time.Time
}

func newRootMemory(c clock.PassiveClock, ttl time.Duration, max int) *rootMemory {
	return &rootMemory{clock: c, ttl: ttl, max: max, entries: map[string]*memEntry{}}
}

// record merges update into the entry for key and renews its expiry.
func (m *rootMemory) record(key string, update func(*memEntry)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	m.expireLocked(now)
	e := m.entries[key]
	if e == nil {
		for len(m.entries) >= m.max && len(m.queue) > 0 {
			m.dropOldestLocked()
		}
		e = &memEntry{}
		m.entries[key] = e
	}
	update(e)
	e.expires = now.Add(m.ttl)
	m.queue = append(m.queue, queued{key: key, expires: e.expires})
	// Renewals leave stale queue items behind; compact when they dominate.
	if len(m.queue) > 2*m.max {
		live := m.queue[:0]
		for _, q := range m.queue {
			if e := m.entries[q.key]; e != nil && e.expires.Equal(q.expires) {
				live = append(live, q)
			}
		}
		m.queue = live
	}
}

// lookup calls f with the live entry for key, under the lock, and returns
// its result; false when there is no live entry.
func (m *rootMemory) lookup(key string, f func(*memEntry) bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(m.clock.Now())
	e := m.entries[key]
	if e == nil {
		return false
	}
	return f(e)
}

func (m *rootMemory) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(m.clock.Now())
	return len(m.entries)
}

func (m *rootMemory) expireLocked(now time.Time) {
	for len(m.queue) > 0 && !m.queue[0].expires.After(now) {
		m.dropOldestLocked()
	}
}

// dropOldestLocked pops the head of the queue and forgets its entry unless
// the entry was renewed since.
func (m *rootMemory) dropOldestLocked() {
	q := m.queue[0]
	m.queue[0] = queued{}
	m.queue = m.queue[1:]
	if e := m.entries[q.key]; e != nil && e.expires.Equal(q.expires) {
		delete(m.entries, q.key)
	}
}
