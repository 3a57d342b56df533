package cascade

import (
	"fmt"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// nsCountStore is a cache.ReflectorStore for metadata-only watches that keeps
// only the names of the live objects of one resource, per namespace.
type nsCountStore struct {
	mu     sync.RWMutex
	byNS   map[string]map[string]struct{}
	synced bool
}

var _ cache.ReflectorStore = (*nsCountStore)(nil)

func newNSCountStore() *nsCountStore {
	return &nsCountStore{byNS: map[string]map[string]struct{}{}}
}

func objectMeta(obj any) (metav1.Object, error) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("failed to read object metadata: unexpected type %T", obj)
	}
	return m, nil
}

func (s *nsCountStore) Add(obj any) error    { return s.put(obj) }
func (s *nsCountStore) Update(obj any) error { return s.put(obj) }
func (s *nsCountStore) Resync() error        { return nil }

func (s *nsCountStore) put(obj any) error {
	m, err := objectMeta(obj)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putLocked(m)
	return nil
}

// putLocked counts m unless it is being deleted: an object with a
// deletionTimestamp is on its way out already.
func (s *nsCountStore) putLocked(m metav1.Object) {
	names := s.byNS[m.GetNamespace()]
	if m.GetDeletionTimestamp() != nil {
		if names != nil {
			delete(names, m.GetName())
			if len(names) == 0 {
				delete(s.byNS, m.GetNamespace())
			}
		}
		return
	}
	if names == nil {
		names = map[string]struct{}{}
		s.byNS[strings.Clone(m.GetNamespace())] = names
	}
	names[strings.Clone(m.GetName())] = struct{}{}
}

func (s *nsCountStore) Delete(obj any) error {
	m, err := objectMeta(obj)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if names := s.byNS[m.GetNamespace()]; names != nil {
		delete(names, m.GetName())
		if len(names) == 0 {
			delete(s.byNS, m.GetNamespace())
		}
	}
	return nil
}

func (s *nsCountStore) Replace(list []any, _ string) error {
	metas := make([]metav1.Object, 0, len(list))
	for _, obj := range list {
		m, err := objectMeta(obj)
		if err != nil {
			return err
		}
		metas = append(metas, m)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byNS = map[string]map[string]struct{}{}
	for _, m := range metas {
		s.putLocked(m)
	}
	s.synced = true
	return nil
}

func (s *nsCountStore) count(ns string) (int, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.byNS[ns]), s.synced
}
