package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/internal/benchstat"
	"github.com/kubedefender/kubedefender/serving"
)

// runLoad sends GETs to url from workers keep-alive connections for d.
func runLoad(url string, client *http.Client, workers int, d time.Duration) benchstat.Round {
	var (
		mu   sync.Mutex
		lats []time.Duration
		errs atomic.Int64
		wg   sync.WaitGroup
	)
	deadline := time.Now().Add(d)
	began := time.Now()
	for range workers {
		wg.Go(func() {
			local := make([]time.Duration, 0, 4096)
			for time.Now().Before(deadline) {
				t0 := time.Now()
				resp, err := client.Get(url)
				if err != nil {
					errs.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs.Add(1)
					continue
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(began)
	return benchstat.Summarize(lats, elapsed, errs.Load(), "")
}

// bareProxy serves a plain httputil.ReverseProxy, with its defaults (no
// flush interval; a buffer pool if pooled, as ours has), behind the same
// server and TLS setup as the KubeDefender proxy in e (serving pair, client
// certificates requested) and with the same upstream transport settings
// (HTTP/2, TLS; no front-proxy certificate, since it forwards no identity).
func bareProxy(b *testing.B, e *env, pooled bool) string {
	b.Helper()
	u, _ := url.Parse(e.upstream.URL)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: e.proxy.newTransport(e.proxy.upstreamTransport.TLSClientConfig.Clone()),
	}
	if pooled {
		rp.BufferPool = copyBuffers{}
	}
	cfg, err := e.proxy.ServerConfig("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	cfg.Handler, cfg.AfterShutdown = rp, nil
	srv, err := serving.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	return "https://" + srv.Addr().String()
}

// BenchmarkProxyVersusBareReverseProxy puts the same load, from the same
// client-certificate user, on (a) the KubeDefender proxy with the example
// policy, front-proxy authentication and priority levels (the user falls in
// the catch-all level, so every request passes a queue set), (b) a bare
// httputil.ReverseProxy with the same TLS, and (c) the same with a buffer
// pool, all in front of the same fast in-process upstream. The targets are
// against (b); the ratio against (c) is the cost of the filters alone.
// Load generator, proxies and upstream share the process and its CPUs, so
// the throughput is that of the whole loop.
//
// Rounds rotate between the three, in rotating order, so that machine noise
// hits all alike. It reports, for each, the throughput over all its rounds
// and p50 and p99 over all its latencies, the ratios, and the median of the
// per-round throughput ratios (each round compared with the other proxies'
// rounds next to it), which one stalled round cannot move.
func BenchmarkProxyVersusBareReverseProxy(b *testing.B) {
	policyYAML, err := os.ReadFile("testdata/example-policy.yaml")
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[]}`)
	e := newEnv(b, envOptions{policy: string(policyYAML), upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})})
	pair := e.userCert(b, "bench-user", "bench")
	const workers, round, rounds = 16, time.Second, 6
	client := func() *http.Client {
		c := e.client(pair, false)
		c.Transport.(*http.Transport).MaxIdleConnsPerHost = workers
		return c
	}
	path := "/api/v1/namespaces/default/pods"
	type target struct {
		name    string
		url     string
		client  *http.Client
		results []benchstat.Round
	}
	kd := &target{name: "kubedefender", url: e.proxyURL + path, client: client()}
	bare := &target{name: "bare ReverseProxy", url: bareProxy(b, e, false) + path, client: client()}
	pooled := &target{name: "bare + buffer pool", url: bareProxy(b, e, true) + path, client: client()}
	targets := []*target{bare, pooled, kd}
	for _, t := range targets {
		runLoad(t.url, t.client, workers, 300*time.Millisecond) // warm up
	}
	b.ResetTimer()
	var vsBare, vsPooled []float64
	for i := range rounds {
		for j := range targets {
			t := targets[(i+j)%len(targets)]
			t.results = append(t.results, runLoad(t.url, t.client, workers, round))
		}
		k := kd.results[i].QPS()
		vsBare, vsPooled = append(vsBare, k/bare.results[i].QPS()), append(vsPooled, k/pooled.results[i].QPS())
	}
	b.StopTimer()
	all := map[*target]benchstat.Round{}
	for _, t := range targets {
		all[t] = benchstat.Merge(t.results)
		if all[t].Errors > 0 {
			b.Fatalf("%s: %d errors", t.name, all[t].Errors)
		}
	}
	k, r, p := all[kd], all[bare], all[pooled]
	fmt.Printf("\nload: %d workers, HTTP/1.1 keep-alive, client certificates, %d x %s rounds each, GOMAXPROCS=%d\n", workers, rounds, round, runtime.GOMAXPROCS(0))
	for _, t := range targets {
		m := all[t]
		fmt.Printf("  %-19s %8.0f req/s  p50 %8s  p99 %8s\n", t.name, m.QPS(), m.P50.Round(time.Microsecond), m.P99.Round(time.Microsecond))
	}
	fmt.Printf("  vs bare:        throughput ratio %.3fx, median per round %.3fx (target >= 0.9x), added p50 %s, added p99 %s (target <= 1ms)\n",
		k.QPS()/r.QPS(), benchstat.Median(vsBare), (k.P50 - r.P50).Round(time.Microsecond), (k.P99 - r.P99).Round(time.Microsecond))
	fmt.Printf("  vs bare + pool: throughput ratio %.3fx, median per round %.3fx, added p50 %s, added p99 %s\n",
		k.QPS()/p.QPS(), benchstat.Median(vsPooled), (k.P50 - p.P50).Round(time.Microsecond), (k.P99 - p.P99).Round(time.Microsecond))
	b.ReportMetric(k.QPS(), "kd-req/s")
	b.ReportMetric(r.QPS(), "bare-req/s")
	b.ReportMetric(k.QPS()/r.QPS(), "throughput-ratio")
	b.ReportMetric(benchstat.Median(vsBare), "median-round-ratio")
	b.ReportMetric(k.QPS()/p.QPS(), "pooled-throughput-ratio")
	b.ReportMetric(float64(k.P99-r.P99)/1e3, "added-p99-µs")
	b.ReportMetric(float64(k.P50-r.P50)/1e3, "added-p50-µs")
}

// BenchmarkIdleWatchMemory opens 5,000 idle watches straight at the upstream
// and then the same 5,000 through the proxy, and reports the difference in
// heap and stack per watch: the proxy's cost of one idle watch (its client
// connection, its upstream HTTP/2 stream and the goroutines behind them).
func BenchmarkIdleWatchMemory(b *testing.B) {
	const watches = 5000
	e := newEnv(b, envOptions{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_ = http.NewResponseController(w).Flush()
		<-r.Context().Done()
	})})
	pair := e.userCert(b, "watcher")
	measure := func(base string, rootCA *tls.Config) uint64 {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		tc := rootCA.Clone()
		tc.Certificates = []tls.Certificate{*pair}
		tr := &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: watches, MaxConnsPerHost: 0, ForceAttemptHTTP2: false}
		defer tr.CloseIdleConnections()
		before := heapAndStacks()
		var wg sync.WaitGroup
		var opened atomic.Int64
		bodies := make(chan io.Closer, watches)
		sem := make(chan struct{}, 64)
		for range watches {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/pods?watch=true", nil)
				resp, err := tr.RoundTrip(req)
				if err != nil || resp.StatusCode != http.StatusOK {
					return
				}
				opened.Add(1)
				bodies <- resp.Body
			})
		}
		wg.Wait()
		if opened.Load() != watches {
			b.Fatalf("opened %d of %d watches", opened.Load(), watches)
		}
		time.Sleep(500 * time.Millisecond)
		after := heapAndStacks()
		close(bodies)
		for c := range bodies {
			_ = c.Close()
		}
		return after - before
	}
	clientTLS := &tls.Config{RootCAs: e.serverCA.pool(), MinVersion: tls.VersionTLS12}
	b.ResetTimer()
	began := time.Now()
	direct := measure(e.upstream.URL, clientTLS)
	time.Sleep(time.Second) // let the direct connections go
	via := measure(e.proxyURL, clientTLS)
	b.StopTimer()
	per := (float64(via) - float64(direct)) / watches
	fmt.Printf("\n%d idle watches: %.1f KiB each end to end straight at the upstream, %.1f KiB through the proxy: the proxy adds %.1f KiB per watch (target <= 64 KiB); took %s\n",
		watches, float64(direct)/watches/1024, float64(via)/watches/1024, per/1024, time.Since(began).Round(time.Millisecond))
	b.ReportMetric(per/1024, "KiB/watch")
}

func heapAndStacks() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}
