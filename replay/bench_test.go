package replay

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const benchPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: bench}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete, evict], resources: [pods]}
    per: [namespace]
    windows: [{window: 1m, limit: 20}, {window: 5m, limit: 50}, {window: 1h, limit: 200}, {window: 24h, limit: 1000}]
    breaker: {recovery: Auto, cooldown: 10m, halfOpenLimit: 5}
  - name: writes-by-user
    mode: Shadow
    match: {verbs: [create, update], resources: ["*"]}
    per: [user]
    windows: [{window: 1m, limit: 100}, {window: 1h, limit: 2000}]
  rateLimits:
  - name: agent-reads
    match: {verbs: [get, list, watch], resources: ["*"], userAgents: ["^node-agent/"]}
    per: [user, userAgent]
    qps: 5
    burst: 10
  - name: all-reads
    mode: Shadow
    match: {verbs: [get, list], resources: ["*"]}
    per: [user]
    qps: 50
    burst: 100
  priorityLevels:
  - {name: exempt, exempt: true}
  - {name: workload, shares: 30}
  - {name: catch-all, shares: 5}
  flowSchemas:
  - {name: masters, precedence: 100, priorityLevel: exempt, match: {groups: ["system:masters"]}}
  - {name: nodes, precedence: 200, priorityLevel: workload, match: {groups: ["system:nodes"]}}
`

var benchLog struct {
	once sync.Once
	path string
	err  error
}

// benchEvents is the size of the synthetic log.
const benchEvents = 1_000_000

// syntheticLog writes a log of benchEvents events (once per process): a
// cluster of 1000 namespaces and 500 users over about an hour, 70% reads
// (a fifth of them by node agents), 20% writes, 10% deletes and evictions,
// each request as one ResponseComplete line of about 700 bytes, as
// kube-apiserver writes them at level Metadata with omitStages
// [RequestReceived], slightly out of order.
func syntheticLog(dir string) (string, error) {
	p := filepath.Join(dir, "audit-1m.log")
	f, err := os.Create(p)
	if err != nil {
		return "", err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var line []byte
	for i := range benchEvents {
		at := t0.Add(time.Duration(i) * 3600 * time.Millisecond) // 1M over 1h
		if i%7 == 0 {
			at = at.Add(-40 * time.Millisecond) // out of order
		}
		ns := fmt.Sprintf("team-%d", (i*7919)%1000)
		user := fmt.Sprintf("system:serviceaccount:%s:sa-%d", ns, i%500)
		ua, groups := "kube-controller-manager/v1.37.2 (linux/amd64) kubernetes/abc/deployment-controller", `["system:serviceaccounts","system:authenticated"]`
		verb, sub, code := "list", "", 200
		switch r := (i * 31) % 100; {
		case r < 14:
			ua, groups = "node-agent/2.1", `["system:nodes","system:authenticated"]`
			user = fmt.Sprintf("system:node:node-%d", i%300)
		case r < 50:
			verb = "get"
		case r < 70:
			verb = "watch"
		case r < 80:
			verb = "update"
		case r < 90:
			verb, code = "create", 201
		case r < 97:
			verb = "delete"
		default:
			verb, sub, code = "create", "eviction", 201
		}
		line = line[:0]
		line = fmt.Appendf(line, `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"%08x-1f2e-4d3c-8b7a-%012x","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/%s/pods/pod-%d","verb":"%s","user":{"username":"%s","uid":"5d2f9c1e-7a1b-4c3d-9e8f-0a1b2c3d4e5f","groups":%s,"extra":{"authentication.kubernetes.io/credential-id":["JTI=0e6c3b1a-9f8e-4d7c-b6a5-948372615041"]}},"sourceIPs":["10.0.3.17"],"userAgent":"%s","objectRef":{"resource":"pods","namespace":"%s","name":"pod-%d","apiVersion":"v1","subresource":"%s"},"responseStatus":{"metadata":{},"code":%d},"requestReceivedTimestamp":"%s","stageTimestamp":"%s","annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding"}}`+"\n",
			i, i, ns, i%50, verb, user, groups, ua, ns, i%50, sub, code, at.Format(time.RFC3339Nano), at.Add(3*time.Millisecond).Format(time.RFC3339Nano))
		w.Write(line)
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	return p, f.Close()
}

// BenchmarkReplay replays a synthetic 1M-event log (see syntheticLog) and
// reports events replayed per second and the peak heap in use while
// replaying. Run it on one core:
//
//	go test -run '^$' -bench BenchmarkReplay -benchtime 1x -cpu 1 ./replay/
func BenchmarkReplay(b *testing.B) {
	benchLog.once.Do(func() {
		dir, err := os.MkdirTemp("", "kubedefender-replay-bench")
		if err != nil {
			benchLog.err = err
			return
		}
		benchLog.path, benchLog.err = syntheticLog(dir)
	})
	if benchLog.err != nil {
		b.Fatalf("failed to write the synthetic log: %v", benchLog.err)
	}
	b.Cleanup(func() { os.RemoveAll(filepath.Dir(benchLog.path)) })
	pol := parsePolicy(b, benchPolicy)
	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	b.ResetTimer()
	start := time.Now()
	var rep *Report
	for range b.N {
		var err error
		rep, err = Run(context.Background(), Config{Policy: pol, Files: []string{benchLog.path}})
		if err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	close(stop)
	<-done
	if rep.Events != benchEvents || rep.Skipped != 0 || rep.Late != 0 {
		b.Fatalf("replayed %d events (skipped %d, late %d), want %d", rep.Events, rep.Skipped, rep.Late, benchEvents)
	}
	perSec := float64(benchEvents*b.N) / elapsed.Seconds()
	b.ReportMetric(perSec, "events/s")
	b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MiB")
	b.Logf("%d events in %s: %.0f events/s, peak heap in use %.1f MiB (GOMAXPROCS %d)",
		benchEvents*b.N, elapsed.Round(time.Millisecond), perSec, float64(peak.Load())/(1<<20), runtime.GOMAXPROCS(0))
}
