package cascade

import (
	"math"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// tolSet is an interned list of the NoExecute tolerations of pods. Most pods
// of a cluster share one of a handful of lists (the two default
// not-ready/unreachable tolerations, a DaemonSet's "tolerate everything"), so
// each list is kept once and counted.
type tolSet struct {
	key  string
	refs int
	list []corev1.Toleration
}

// internTolerations returns the shared tolSet for the NoExecute (or
// any-effect) tolerations in tols, or nil when there are none.
func (s *podStore) internTolerations(tols []corev1.Toleration) *tolSet {
	var b strings.Builder
	n := 0
	for i := range tols {
		t := &tols[i]
		if t.Effect != "" && t.Effect != corev1.TaintEffectNoExecute {
			continue
		}
		n++
		b.WriteString(strconv.Quote(t.Key))
		b.WriteByte(' ')
		b.WriteString(string(t.Operator))
		b.WriteByte(' ')
		b.WriteString(strconv.Quote(t.Value))
		b.WriteByte(' ')
		b.WriteString(string(t.Effect))
		b.WriteByte(' ')
		if t.TolerationSeconds != nil {
			b.WriteString(strconv.FormatInt(*t.TolerationSeconds, 10))
		} else {
			b.WriteByte('-')
		}
		b.WriteByte(';')
	}
	if n == 0 {
		return nil
	}
	key := b.String()
	if ts := s.tols[key]; ts != nil {
		ts.refs++
		return ts
	}
	ts := &tolSet{key: key, refs: 1, list: make([]corev1.Toleration, 0, n)}
	for i := range tols {
		t := tols[i]
		if t.Effect != "" && t.Effect != corev1.TaintEffectNoExecute {
			continue
		}
		if t.TolerationSeconds != nil {
			secs := *t.TolerationSeconds
			t.TolerationSeconds = &secs
		}
		ts.list = append(ts.list, t)
	}
	s.tols[key] = ts
	return ts
}

// Eviction is what the taint manager does to a pod when a NoExecute taint
// lands on its node.
type Eviction int

const (
	// Tolerated: the pod tolerates the taint forever and stays.
	Tolerated Eviction = iota
	// EvictedNow: no toleration matches (or one allows 0 seconds).
	EvictedNow
	// EvictedLater: every matching toleration that bounds its time does,
	// so the pod goes after the smallest tolerationSeconds.
	EvictedLater
)

// EvictionFor decides, with the taint manager's rules, whether a pod with
// tolerations tols is evicted by taint, and after how long. Only NoExecute
// taints evict. Matching is corev1.Toleration.ToleratesTaint; as in the taint
// manager, when several tolerations match, the smallest tolerationSeconds
// among those that set one wins, and the pod stays forever only when no
// matching toleration sets one. comparisonOperators is whether the cluster
// enables the Lt/Gt toleration operators; when it does not, such a toleration
// matches nothing.
func EvictionFor(tols []corev1.Toleration, taint *corev1.Taint, comparisonOperators bool) (Eviction, time.Duration) {
	if taint.Effect != corev1.TaintEffectNoExecute {
		return Tolerated, 0
	}
	matched := false
	minSecs := int64(math.MaxInt64)
	for i := range tols {
		if !tols[i].ToleratesTaint(klog.Background(), taint, comparisonOperators) {
			continue
		}
		matched = true
		if s := tols[i].TolerationSeconds; s != nil {
			if *s <= 0 {
				return EvictedNow, 0
			}
			minSecs = min(minSecs, *s)
		}
	}
	switch {
	case !matched:
		return EvictedNow, 0
	case minSecs == math.MaxInt64:
		return Tolerated, 0
	default:
		return EvictedLater, time.Duration(minSecs) * time.Second
	}
}
