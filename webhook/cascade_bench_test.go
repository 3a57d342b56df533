package webhook

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/kubedefender/kubedefender/cascade"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
)

// BenchmarkRootDelete measures the webhook's own work for a namespace
// delete judged by an AtRoot budget: decode, count the namespace's 10,000
// pods in a synced cascade.Counter, judge with the engine (memory store),
// encode. The budget is large enough that every delete is admitted; the
// reported p99 is of the handler alone, without the network.
func BenchmarkRootDelete(b *testing.B) {
	const pods = 10_000
	objs := make([]runtime.Object, 0, pods)
	for i := range pods {
		objs = append(objs, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: fmt.Sprintf("p-%d", i), UID: types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", i))}})
	}
	ctr, err := cascade.New(cascade.Config{Client: fake.NewClientset(objs...)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctr.Start(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), ctr.HasSynced) {
		b.Fatal("the counter never synced")
	}
	if n := ctr.PodsInNamespace("prod"); n != pods {
		b.Fatalf("the counter holds %d pods, want %d", n, pods)
	}
	p, err := policy.Parse("bench.yaml", []byte(strings.Replace(atRootPolicy, "limit: 20}]", "limit: 1000000000}]", 1)))
	if err != nil {
		b.Fatal(err)
	}
	eng, err := limiter.NewEngine(limiter.EngineConfig{Policy: p, Store: limiter.NewMemoryStore(limiter.MemoryConfig{})})
	if err != nil {
		b.Fatal(err)
	}
	h, err := NewHandler(Config{Engine: eng, Cascades: ctr, Namespace: "kubedefender"})
	if err != nil {
		b.Fatal(err)
	}
	// A dry run: judged with the count, charging and recording nothing, so
	// every iteration is the same root.
	body := cascadeReview{op: "DELETE", resource: "namespaces", name: "prod", oldObject: meta("ns-uid", "") + "}", dryRun: true}.json()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, Path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		h.ServeHTTP(rec, req)
		lat = append(lat, time.Since(t0))
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"allowed":true`) {
			b.Fatalf("answer %d %s", rec.Code, rec.Body.String())
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}
