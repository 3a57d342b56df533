package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// loadResult is one load run: completed requests, elapsed time and latencies.
type loadResult struct {
	n        int
	elapsed  time.Duration
	lats     []time.Duration // sorted
	p50, p99 time.Duration
	errors   int64
}

func (r loadResult) qps() float64 { return float64(r.n) / r.elapsed.Seconds() }

// runLoad sends GETs to url from workers keep-alive connections for d.
func runLoad(url string, client *http.Client, workers int, d time.Duration) loadResult {
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
	return summarize(lats, elapsed, errs.Load())
}

func summarize(lats []time.Duration, elapsed time.Duration, errors int64) loadResult {
	slices.Sort(lats)
	r := loadResult{n: len(lats), elapsed: elapsed, lats: lats, errors: errors}
	if len(lats) > 0 {
		r.p50, r.p99 = lats[len(lats)/2], lats[len(lats)*99/100]
	}
	return r
}

// merge pools rounds: requests over their summed time, percentiles over all
// their latencies.
func merge(rs []loadResult) loadResult {
	var (
		lats    []time.Duration
		elapsed time.Duration
		errors  int64
	)
	for _, r := range rs {
		lats = append(lats, r.lats...)
		elapsed += r.elapsed
		errors += r.errors
	}
	return summarize(lats, elapsed, errors)
}

// bareProxy serves a plain httputil.ReverseProxy, with its defaults (no
// flush interval, no buffer pool), behind the same server and TLS setup as
// the KubeDefender proxy in e (serving pair, client certificates requested)
// and with the same upstream transport settings (HTTP/2, TLS; no front-proxy
// certificate, since it forwards no identity).
func bareProxy(b *testing.B, e *env) string {
	b.Helper()
	u, _ := url.Parse(e.upstream.URL)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: e.proxy.newTransport(e.proxy.upstreamTransport.TLSClientConfig.Clone()),
	}
	srv := e.proxy.newServer()
	srv.Handler = rp
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	b.Cleanup(func() { _ = srv.Close() })
	return "https://" + ln.Addr().String()
}

// BenchmarkProxyVersusBareReverseProxy puts the same load, from the same
// client-certificate user, on (a) the KubeDefender proxy with the example
// policy, front-proxy authentication and priority levels (the user falls in
// the catch-all level, so every request passes a queue set), and (b) a bare
// httputil.ReverseProxy with the same TLS, both in front of the same fast
// in-process upstream. Load generator, proxies and upstream share the
// process and its CPUs, so the throughput is that of the whole loop; the
// ratio compares the two proxies under it.
//
// Rounds alternate between the two, in alternating order, so that machine
// noise hits both alike. It reports, for each, the throughput over all its
// rounds and p50 and p99 over all its latencies, the ratios, and the median
// of the per-round throughput ratios (each round paired with the other
// proxy's round next to it), which one noisy round cannot move.
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
	bare := bareProxy(b, e)
	pair := e.userCert(b, "bench-user", "bench")
	const workers, round, rounds = 16, time.Second, 6
	client := func() *http.Client {
		c := e.client(pair, false)
		c.Transport.(*http.Transport).MaxIdleConnsPerHost = workers
		return c
	}
	path := "/api/v1/namespaces/default/pods"
	kdClient, bareClient := client(), client()
	runLoad(e.proxyURL+path, kdClient, workers, 300*time.Millisecond) // warm up
	runLoad(bare+path, bareClient, workers, 300*time.Millisecond)
	b.ResetTimer()
	var kd, br []loadResult
	var ratios []float64
	for i := range rounds {
		var k, r loadResult
		if i%2 == 0 {
			r = runLoad(bare+path, bareClient, workers, round)
			k = runLoad(e.proxyURL+path, kdClient, workers, round)
		} else {
			k = runLoad(e.proxyURL+path, kdClient, workers, round)
			r = runLoad(bare+path, bareClient, workers, round)
		}
		kd, br = append(kd, k), append(br, r)
		ratios = append(ratios, k.qps()/r.qps())
	}
	b.StopTimer()
	slices.Sort(ratios)
	median := (ratios[(len(ratios)-1)/2] + ratios[len(ratios)/2]) / 2
	k, r := merge(kd), merge(br)
	if k.errors > 0 || r.errors > 0 {
		b.Fatalf("errors: kubedefender %d, bare %d", k.errors, r.errors)
	}
	fmt.Printf("\nload: %d workers, HTTP/1.1 keep-alive, client certificates, %d x %s rounds each, GOMAXPROCS=%d\n", workers, rounds, round, runtime.GOMAXPROCS(0))
	fmt.Printf("  bare ReverseProxy  %8.0f req/s  p50 %8s  p99 %8s\n", r.qps(), r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond))
	fmt.Printf("  kubedefender       %8.0f req/s  p50 %8s  p99 %8s\n", k.qps(), k.p50.Round(time.Microsecond), k.p99.Round(time.Microsecond))
	fmt.Printf("  throughput ratio %.3fx, median per round %.3fx (target >= 0.9x), added p50 %s, added p99 %s (target <= 1ms)\n",
		k.qps()/r.qps(), median, (k.p50 - r.p50).Round(time.Microsecond), (k.p99 - r.p99).Round(time.Microsecond))
	b.ReportMetric(k.qps(), "kd-req/s")
	b.ReportMetric(r.qps(), "bare-req/s")
	b.ReportMetric(k.qps()/r.qps(), "throughput-ratio")
	b.ReportMetric(median, "median-round-ratio")
	b.ReportMetric(float64(k.p99-r.p99)/1e3, "added-p99-µs")
	b.ReportMetric(float64(k.p50-r.p50)/1e3, "added-p50-µs")
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
