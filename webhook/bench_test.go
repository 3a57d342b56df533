package webhook

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kubedefender/kubedefender/internal/benchstat"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/pki"
	"github.com/kubedefender/kubedefender/policy"
)

const benchPolicy = `apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: bench}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete, evict], resources: [pods]}
    exclude: {serviceAccounts: [kube-system/generic-garbage-collector]}
    per: [namespace]
    windows: [{window: 1m, limit: 1000000000}, {window: 1h, limit: 1000000000}]
    breaker: {recovery: Manual}
`

// noopReview is the answer of the no-op webhook: allowed, decoded from
// nothing.
var noopReview = []byte(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","response":{"uid":"","allowed":true}}`)

// noopWebhook reads the body (as any server must, to reuse the connection)
// and answers allowed without decoding a byte of it.
var noopWebhook = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(noopReview)
})

// startBenchServers serves, each on its own 127.0.0.1 port, the webhook on
// the memory store (as serve does) and the no-op webhook, through the same
// NewServer (TLS stack, timeouts, HTTP/1.1) with the same serving pair, and
// returns their review URLs and a client that trusts them.
func startBenchServers(b *testing.B) (webhookURL, noopURL string, client *http.Client) {
	b.Helper()
	h := benchHandler(b)
	ca, err := pki.NewCA(pki.CAOptions{})
	if err != nil {
		b.Fatal(err)
	}
	certs := servingPair(b, b.TempDir(), ca)
	var urls []string
	for _, handler := range []http.Handler{h, noopWebhook} {
		srv, err := NewServer(ServerConfig{Addr: "127.0.0.1:0", Handler: handler, Certificates: certs})
		if err != nil {
			b.Fatal(err)
		}
		runServer(b, srv)
		urls = append(urls, "https://"+srv.Addr().String()+Path)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM)
	// Like the API server's webhook client against a server without HTTP/2:
	// a pool of HTTP/1.1 keep-alive connections, one per concurrent call.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 128}
	b.Cleanup(tr.CloseIdleConnections)
	return urls[0], urls[1], &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// load is what one target served over the rounds of a benchmark.
type load struct {
	lats    []time.Duration
	elapsed time.Duration
	// rounds is the throughput of each round.
	rounds []float64
}

func (l *load) qps() float64 { return float64(len(l.lats)) / l.elapsed.Seconds() }

// percentile of the sorted latencies.
func (l *load) percentile(p int) time.Duration { return l.lats[len(l.lats)*p/100] }

// run sends reviews first..first+n-1 to url from clients concurrent callers
// and adds their latencies and the elapsed time to l.
func (l *load) run(b *testing.B, client *http.Client, url string, body []byte, clients, first, n int) {
	lat := make([]time.Duration, n)
	next := make(chan int, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for i := range next {
				t0 := time.Now()
				roundTrip(b, client, url, body, first+i)
				lat[i] = time.Since(t0)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start)
	l.elapsed += elapsed
	l.lats = append(l.lats, lat...)
	l.rounds = append(l.rounds, float64(n)/elapsed.Seconds())
}

// medianRatio is the median over rounds of a's throughput over b's in the
// same round: one round stalled by the machine cannot move it.
func medianRatio(a, b *load) float64 {
	rs := make([]float64, len(a.rounds))
	for i := range rs {
		rs[i] = a.rounds[i] / b.rounds[i]
	}
	return benchstat.Median(rs)
}

// BenchmarkAdmissionReviewTLS measures an AdmissionReview round trip (a pod
// DELETE with its old object, allowed and charged) over TLS on loopback with
// the memory store, at 1, 16 and 64 concurrent clients, against its
// baseline in the same run: a no-op webhook on the same TLS stack that reads
// the body and answers allowed without decoding it. The difference is the
// handler's own cost (decode, judge, charge, encode). Rounds alternate
// between the two, in alternating order, so that machine noise hits both
// alike. It reports the webhook's and the no-op's requests per second, p50
// and p99, the throughput ratio over all rounds and its median over rounds
// (goal: at least 0.8) and the p99 difference (goal: at most +0.5ms):
//
//	go test ./webhook -run '^$' -bench AdmissionReviewTLS -benchtime 20000x
func BenchmarkAdmissionReviewTLS(b *testing.B) {
	body := compactReview(b)
	const rounds = 20
	for _, clients := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			webhookURL, noopURL, client := startBenchServers(b)
			// Warm up the connections (one per caller) and the key.
			var warm load
			warm.run(b, client, webhookURL, body, clients, -10*clients, 10*clients)
			warm.run(b, client, noopURL, body, clients, 0, 10*clients)
			var webhook, noop load
			per := max(b.N/rounds, 1)
			b.ResetTimer()
			for r := range rounds {
				first := r * per
				if r%2 == 0 {
					webhook.run(b, client, webhookURL, body, clients, first, per)
					noop.run(b, client, noopURL, body, clients, first, per)
				} else {
					noop.run(b, client, noopURL, body, clients, first, per)
					webhook.run(b, client, webhookURL, body, clients, first, per)
				}
			}
			b.StopTimer()
			slices.Sort(webhook.lats)
			slices.Sort(noop.lats)
			ratio := webhook.qps() / noop.qps()
			p99Diff := webhook.percentile(99) - noop.percentile(99)
			b.ReportMetric(webhook.qps(), "req/s")
			b.ReportMetric(float64(webhook.percentile(50).Microseconds()), "p50-µs")
			b.ReportMetric(float64(webhook.percentile(99).Microseconds()), "p99-µs")
			b.ReportMetric(noop.qps(), "noop-req/s")
			b.ReportMetric(float64(noop.percentile(50).Microseconds()), "noop-p50-µs")
			b.ReportMetric(float64(noop.percentile(99).Microseconds()), "noop-p99-µs")
			b.ReportMetric(ratio, "x-noop-throughput")
			b.ReportMetric(medianRatio(&webhook, &noop), "x-noop-median-round")
			b.ReportMetric(float64(p99Diff.Microseconds()), "p99-diff-µs")
			b.Logf("clients=%d: %.0f req/s = %.2fx the no-op webhook's %.0f (median round %.2fx; goal >= 0.8x); p99 %s vs %s, %+dµs (goal <= +500µs)",
				clients, webhook.qps(), ratio, noop.qps(), medianRatio(&webhook, &noop), webhook.percentile(99), noop.percentile(99), p99Diff.Microseconds())
		})
	}
}

// compactReview is the golden pod DELETE review as the API server sends it:
// compact JSON.
func compactReview(b *testing.B) []byte {
	b.Helper()
	pretty, err := os.ReadFile(filepath.Join("testdata", "golden", "delete-allowed.request.json"))
	if err != nil {
		b.Fatal(err)
	}
	var body bytes.Buffer
	if err := json.Compact(&body, pretty); err != nil {
		b.Fatal(err)
	}
	return body.Bytes()
}

// roundTrip posts one review, with a distinct object uid per i so that every
// request is judged and charged (not a repeat).
func roundTrip(b *testing.B, c *http.Client, url string, body []byte, i int) {
	body = bytes.Replace(body, []byte("6f1c2d3e-aaaa-4bbb-8ccc-000000000001"), fmt.Appendf(nil, "6f1c2d3e-aaaa-4bbb-8ccc-%012d", i), 1)
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		b.Error(err)
		return
	}
	out, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(out, []byte(`"allowed":true`)) {
		b.Errorf("status %d: %s", resp.StatusCode, out)
	}
}

// BenchmarkDecodeReview measures decoding one pod DELETE review.
func BenchmarkDecodeReview(b *testing.B) {
	body, err := os.ReadFile(filepath.Join("testdata", "golden", "delete-allowed.request.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := decodeReview(body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandler measures the server's own work for one review, without
// the network: decode, judge (memory store), encode.
func BenchmarkHandler(b *testing.B) {
	body, err := os.ReadFile(filepath.Join("testdata", "golden", "delete-allowed.request.json"))
	if err != nil {
		b.Fatal(err)
	}
	h := benchHandler(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(bytes.Replace(body, []byte("6f1c2d3e-aaaa-4bbb-8ccc-000000000001"), fmt.Appendf(nil, "6f1c2d3e-aaaa-4bbb-8ccc-%012d", i), 1)))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Body.String())
		}
	}
}

// benchHandler is the webhook handler on the bench policy and a memory
// store, as serve builds it.
func benchHandler(b *testing.B) *Handler {
	b.Helper()
	p, err := policy.Parse("bench.yaml", []byte(benchPolicy))
	if err != nil {
		b.Fatal(err)
	}
	engine, err := limiter.NewEngine(limiter.EngineConfig{Policy: p})
	if err != nil {
		b.Fatal(err)
	}
	h, err := NewHandler(Config{Engine: engine})
	if err != nil {
		b.Fatal(err)
	}
	return h
}
