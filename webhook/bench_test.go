package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
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

// startBenchServer serves the webhook over TLS on 127.0.0.1:0 with the memory
// store, as serve does, and returns its URL and a client that trusts it.
func startBenchServer(b *testing.B) (string, *http.Client) {
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
	ca, err := pki.NewCA(pki.CAOptions{})
	if err != nil {
		b.Fatal(err)
	}
	certs := servingPair(b, b.TempDir(), ca)
	srv, err := NewServer(ServerConfig{Addr: "127.0.0.1:0", Handler: h, Certificates: certs})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM)
	// Like the API server's webhook client against a server without HTTP/2:
	// a pool of HTTP/1.1 keep-alive connections, one per concurrent call.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 128}
	return srv.URL() + Path, &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// BenchmarkAdmissionReviewTLS measures an AdmissionReview round trip (a pod
// DELETE with its old object, allowed and charged) over TLS on loopback with
// the memory store, at 1, 16 and 64 concurrent clients, and reports p50 and
// p99 latency and requests per second:
//
//	go test ./webhook -run '^$' -bench AdmissionReviewTLS -benchtime 20000x
func BenchmarkAdmissionReviewTLS(b *testing.B) {
	body, err := os.ReadFile(filepath.Join("testdata", "golden", "delete-allowed.request.json"))
	if err != nil {
		b.Fatal(err)
	}
	for _, clients := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			url, client := startBenchServer(b)
			// Warm up the connection and the key.
			for range 100 {
				roundTrip(b, client, url, body, 0)
			}
			lat := make([]time.Duration, b.N)
			var wg sync.WaitGroup
			next := make(chan int, clients)
			b.ResetTimer()
			start := time.Now()
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range next {
						t0 := time.Now()
						roundTrip(b, client, url, body, i)
						lat[i] = time.Since(t0)
					}
				}()
			}
			for i := range b.N {
				next <- i
			}
			close(next)
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
		})
	}
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
