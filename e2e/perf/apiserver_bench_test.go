package perf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/internal/benchstat"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/proxy"
	"github.com/kubedefender/kubedefender/serving"
)

var (
	flagClients = flag.Int("perf.clients", 16, "concurrent clients per target, each on its own connection")
	flagRounds  = flag.Int("perf.rounds", 8, "rounds per target; targets alternate within each round")
	flagRound   = flag.Duration("perf.round", 5*time.Second, "length of one target's round")
	flagWarmup  = flag.Duration("perf.warmup", 2*time.Second, "warm-up load per target before the first round")
	flagHTTP2   = flag.Bool("perf.http2", true, "clients speak HTTP/2 (as client-go does); false: HTTP/1.1 keep-alive")
	flagAPIProf = flag.String("perf.apiserver-cpuprofile", "", "write a CPU profile of kube-apiserver over all the rounds to this file (starts it with --profiling)")
	flagFront   = flag.Bool("perf.bare-front-proxy", true, "also measure a bare proxy that asserts the user with front-proxy headers (as KubeDefender does for client-certificate users; token users keep their token): what the API server's per-request front-proxy certificate check costs")
)

const (
	perfNS     = "perf"
	configMaps = 5
	// userAgent is kubectl's, so that the policy's kubectl-lists rate limit
	// judges every request, as does the Shadow per-user-catch-all.
	userAgent = "kubectl/v1.37.2 (linux/amd64) kubedefender-perf"
)

// unlimited matches the qps and burst of every rate limit of the example
// policy, which the benchmark raises so that they evaluate every request
// but never deny one.
var unlimited = regexp.MustCompile(`(?m)^(\s+)(qps|burst): \d+`)

// BenchmarkAPIServerLists measures what KubeDefender's proxy costs the API
// server's throughput (see the package doc). b.N is ignored: one run is a
// fixed number of rounds (run it with -benchtime 1x).
func BenchmarkAPIServerLists(b *testing.B) {
	load0 := loadAverage()
	var opts framework.Options
	if *flagAPIProf != "" {
		opts.APIServerFlags = []string{"--profiling=true"}
	}
	cp := framework.Start(b, opts)
	path := seed(b, cp)
	token := cp.Token(b, framework.UserAlice)

	kd, reg := startKubeDefender(b, cp)
	bare := startBareProxy(b, cp, false)
	direct, bareT, kdT := &target{name: "direct", url: cp.URL + path}, &target{name: "bare proxy", url: bare + path}, &target{name: "kubedefender", url: kd + path}
	targets := []*target{direct, bareT, kdT}
	var frontT *target
	if *flagFront {
		frontT = &target{name: "bare front-proxy", url: startBareProxy(b, cp, true) + path}
		targets = append(targets, frontT)
	}
	ca := caPool(b, cp.CACertFile)
	for _, t := range targets {
		t.clients = newClients(*flagClients, ca, *flagHTTP2)
		if r := t.run(token, *flagWarmup); r.Errors > 0 || r.N == 0 {
			b.Fatalf("%s: warm-up: %d requests, %d errors (first: %s)", t.name, r.N, r.Errors, r.FirstErr)
		}
	}

	b.ResetTimer()
	profiled := profileAPIServer(b, cp, time.Duration(*flagRounds*len(targets))*(*flagRound))
	for i := range *flagRounds {
		for j := range targets {
			t := targets[(i+j)%len(targets)]
			t.results = append(t.results, t.run(token, *flagRound))
		}
	}
	b.StopTimer()
	if err := <-profiled; err != nil {
		b.Errorf("failed to profile kube-apiserver: %v", err)
	}

	all := map[*target]result{}
	for _, t := range targets {
		all[t] = merge(t.results)
		if all[t].Errors > 0 {
			b.Fatalf("%s: %d errors (first: %s)", t.name, all[t].Errors, all[t].FirstErr)
		}
	}
	rejected := sumCounters(b, reg, "kubedefender_proxy_rejections_total", nil)
	judged := sumCounters(b, reg, "kubedefender_limiter_decisions_total", map[string]string{"kind": "rateLimit"})
	if rejected > 0 {
		b.Fatalf("kubedefender rejected %.0f requests: the benchmark's limits must not deny", rejected)
	}
	d, r, k := all[direct], all[bareT], all[kdT]
	fmt.Printf("\nLIST of %d ConfigMaps by a token user (not exempt), %d clients (%s), %d x %s rounds per target, alternating; GOMAXPROCS=%d\n",
		configMaps, *flagClients, map[bool]string{true: "HTTP/2", false: "HTTP/1.1"}[*flagHTTP2], *flagRounds, *flagRound, runtime.GOMAXPROCS(0))
	fmt.Printf("load average before %s, after %s\n", load0, loadAverage())
	for _, t := range targets {
		m := all[t]
		fmt.Printf("  %-16s %6.0f req/s  p50 %9s  p99 %9s  (per round: %s)\n", t.name, m.QPS(), m.P50.Round(time.Microsecond), m.P99.Round(time.Microsecond), perRound(t.results))
	}
	fmt.Printf("CPU per request (µs): this process (clients and proxy), kube-apiserver, etcd\n")
	for _, t := range targets {
		m := all[t]
		fmt.Printf("  %-16s %6.0f  %6.0f  %6.0f   total %6.0f\n", t.name, m.cpu.per(m.N, cpuSelf), m.cpu.per(m.N, cpuAPIServer), m.cpu.per(m.N, cpuEtcd),
			m.cpu.per(m.N, cpuSelf)+m.cpu.per(m.N, cpuAPIServer)+m.cpu.per(m.N, cpuEtcd))
	}
	kdBare, kdBareMedian := k.QPS()/r.QPS(), medianRatio(kdT.results, bareT.results)
	bareDirect, bareDirectMedian := r.QPS()/d.QPS(), medianRatio(bareT.results, direct.results)
	fmt.Printf("  kubedefender/bare:  %.3fx (median per round %.3fx; goal >= 0.97x)  added p50 %s, added p99 %s (goal <= 1ms)\n",
		kdBare, kdBareMedian, (k.P50 - r.P50).Round(time.Microsecond), (k.P99 - r.P99).Round(time.Microsecond))
	fmt.Printf("  bare/direct:        %.3fx (median per round %.3fx)\n", bareDirect, bareDirectMedian)
	fmt.Printf("  kubedefender/direct: %.3fx; rate-limit decisions %.0f, rejections %.0f\n", k.QPS()/d.QPS(), judged, rejected)
	if frontT != nil {
		f := all[frontT]
		fmt.Printf("  bare front-proxy/bare: %.3fx (median per round %.3fx): the API server's front-proxy check\n", f.QPS()/r.QPS(), medianRatio(frontT.results, bareT.results))
		fmt.Printf("  kubedefender/bare front-proxy: %.3fx (median per round %.3fx)  added p99 %s (KubeDefender forwards this token user's own token: above 1x by the check it avoids)\n",
			k.QPS()/f.QPS(), medianRatio(kdT.results, frontT.results), (k.P99 - f.P99).Round(time.Microsecond))
	}
	b.ReportMetric(k.QPS(), "kd-req/s")
	b.ReportMetric(r.QPS(), "bare-req/s")
	b.ReportMetric(d.QPS(), "direct-req/s")
	b.ReportMetric(kdBareMedian, "kd/bare")
	b.ReportMetric(bareDirectMedian, "bare/direct")
	b.ReportMetric(float64(k.P99-r.P99)/1e3, "added-p99-µs")
}

// profileAPIServer fetches a CPU profile of kube-apiserver for d into
// -perf.apiserver-cpuprofile, if set; the channel tells when it is done.
func profileAPIServer(b *testing.B, cp *framework.ControlPlane, d time.Duration) <-chan error {
	done := make(chan error, 1)
	if *flagAPIProf == "" {
		done <- nil
		return done
	}
	client, err := rest.HTTPClientFor(cp.Config)
	if err != nil {
		b.Fatalf("failed to build the admin HTTP client: %v", err)
	}
	go func() {
		resp, err := client.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", cp.URL, int(d.Seconds())))
		if err != nil {
			done <- err
			return
		}
		defer func() { _ = resp.Body.Close() }()
		if resp.StatusCode != http.StatusOK {
			done <- fmt.Errorf("status %s", resp.Status)
			return
		}
		f, err := os.Create(*flagAPIProf)
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	return done
}

// seed creates the namespace, the ConfigMaps and a Role letting alice read
// them, and returns the path of the LIST.
func seed(b *testing.B, cp *framework.ControlPlane) string {
	b.Helper()
	ctx := context.Background()
	cp.CreateNamespace(b, perfNS)
	for i := range configMaps {
		cm := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("settings-%d", i), Labels: map[string]string{"app": "perf"}},
			Data:       map[string]string{"mode": "production", "replicas": "3", "endpoint": "https://service.perf.svc:8443"},
		}
		if _, err := cp.Client.CoreV1().ConfigMaps(perfNS).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			b.Fatalf("failed to create a ConfigMap: %v", err)
		}
	}
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "configmap-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list"}}},
	}
	if _, err := cp.Client.RbacV1().Roles(perfNS).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		b.Fatalf("failed to create the role: %v", err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "configmap-readers"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: framework.UserAlice}},
	}
	if _, err := cp.Client.RbacV1().RoleBindings(perfNS).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		b.Fatalf("failed to bind the role: %v", err)
	}
	return "/api/v1/namespaces/" + perfNS + "/configmaps"
}

// startKubeDefender serves, in this process, the proxy `kubedefender serve
// --proxy-listen` builds: front-proxy mode, the cluster CA for client
// certificates, TokenReview through the admin client (cached), a memory
// store, and the example production policy with its rate limits raised. It
// returns the proxy's URL and the registry of its metrics.
func startKubeDefender(b *testing.B, cp *framework.ControlPlane) (string, *prometheus.Registry) {
	b.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "examples", "production.yaml"))
	if err != nil {
		b.Fatalf("failed to read the example policy: %v", err)
	}
	yaml := unlimited.ReplaceAllString(string(raw), "${1}${2}: 1000000")
	compiled, err := policy.Parse("production.yaml", []byte(yaml))
	if err != nil {
		b.Fatalf("failed to parse the example policy: %v", err)
	}
	dir := b.TempDir()
	logFile, err := os.Create(filepath.Join(dir, "kubedefender.log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = logFile.Close() })
	log := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))
	reg := prometheus.NewRegistry()
	store := limiter.NewMemoryStore(limiter.MemoryConfig{})
	engine, err := limiter.NewEngine(limiter.EngineConfig{Policy: compiled, Store: store, Registerer: reg, Logger: log})
	if err != nil {
		b.Fatalf("failed to build the engine: %v", err)
	}
	engine.DeclareFronts(limiter.FrontProxy)
	up, err := url.Parse(cp.URL)
	if err != nil {
		b.Fatal(err)
	}
	cert, key := cp.IssueServingCert(b, "kubedefender-perf", "127.0.0.1")
	pair, err := serving.NewCertKey(serving.CertKeyConfig{Purpose: "serving", CertFile: cert, KeyFile: key})
	if err != nil {
		b.Fatalf("failed to load the serving pair: %v", err)
	}
	p, err := proxy.New(proxy.Config{
		Upstream: up, UpstreamCAFile: cp.CACertFile, Serving: pair,
		AuthMode: proxy.AuthFrontProxy, ClientCAFile: cp.CACertFile,
		FrontProxyCertFile: cp.FrontProxyClientCertFile, FrontProxyKeyFile: cp.FrontProxyClientKeyFile,
		TokenReviewClient: cp.Client.AuthenticationV1(),
		Engine:            engine, Policy: compiled,
		Logger: log.With("component", "proxy"), Registerer: reg,
	})
	if err != nil {
		b.Fatalf("failed to build the proxy: %v", err)
	}
	sc, err := p.ServerConfig("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv, err := serving.New(sc)
	if err != nil {
		b.Fatalf("failed to listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	pprof.Do(ctx, pprof.Labels("target", "kubedefender"), func(ctx context.Context) {
		wg.Go(func() { store.Run(ctx) })
		wg.Go(func() { engine.Run(ctx) })
		wg.Go(func() {
			if err := p.Run(ctx); err != nil {
				b.Errorf("kubedefender certificates: %v", err)
			}
		})
		wg.Go(func() {
			if err := srv.Run(ctx); err != nil {
				b.Errorf("kubedefender: %v", err)
			}
		})
	})
	b.Cleanup(func() { cancel(); wg.Wait() })
	return "https://" + srv.Addr().String(), reg
}

// startBareProxy serves a bare httputil.ReverseProxy with TLS in front of
// the API server: it passes the client's token on and does nothing else.
// Its upstream transport is the one a careful reverse proxy would use, and
// the one KubeDefender uses: HTTP/2 over TLS, idle connections kept, the
// client's Accept-Encoding passed through untouched.
//
// With asFrontProxy it authenticates nobody but asserts the benchmark's
// user with X-Remote-* headers over the front-proxy client certificate (the
// API server then verifies that certificate's chain on every request)
// instead of the token: how KubeDefender forwards a client-certificate user
// (a token user, like the benchmark's, keeps its own token).
func startBareProxy(b *testing.B, cp *framework.ControlPlane, asFrontProxy bool) string {
	b.Helper()
	up, err := url.Parse(cp.URL)
	if err != nil {
		b.Fatal(err)
	}
	upTLS := &tls.Config{RootCAs: caPool(b, cp.CACertFile), MinVersion: tls.VersionTLS12}
	rewrite := func(pr *httputil.ProxyRequest) { pr.SetURL(up) }
	name := "bare"
	if asFrontProxy {
		pair, err := tls.LoadX509KeyPair(cp.FrontProxyClientCertFile, cp.FrontProxyClientKeyFile)
		if err != nil {
			b.Fatal(err)
		}
		upTLS.Certificates = []tls.Certificate{pair}
		rewrite = func(pr *httputil.ProxyRequest) {
			pr.SetURL(up)
			pr.Out.Header.Del("Authorization")
			pr.Out.Header["X-Remote-User"] = []string{framework.UserAlice}
			pr.Out.Header["X-Remote-Group"] = []string{"system:authenticated"}
		}
		name = "bare-front-proxy"
	}
	rp := &httputil.ReverseProxy{
		Rewrite: rewrite,
		Transport: &http.Transport{
			TLSClientConfig:     upTLS,
			ForceAttemptHTTP2:   true,
			MaxIdleConns:        1000,
			MaxIdleConnsPerHost: 1000,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
	certFile, keyFile := cp.IssueServingCert(b, name+"-perf", "127.0.0.1")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{
		Handler:           rp,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}},
		ReadHeaderTimeout: 10 * time.Second,
	}
	ln := listen(b)
	pprof.Do(context.Background(), pprof.Labels("target", name), func(context.Context) {
		go func() { _ = srv.ServeTLS(ln, "", "") }()
	})
	b.Cleanup(func() { _ = srv.Close() })
	return "https://" + ln.Addr().String()
}

func listen(b *testing.B) net.Listener {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatalf("failed to listen: %v", err)
	}
	return ln
}

func caPool(b *testing.B, file string) *x509.CertPool {
	b.Helper()
	pem, err := os.ReadFile(file)
	if err != nil {
		b.Fatalf("failed to read the CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		b.Fatalf("failed to parse the CA %s", file)
	}
	return pool
}

// target is one way to the API server, with its own clients (so that each
// keeps its connections across rounds) and its rounds' results.
type target struct {
	name    string
	url     string
	clients []*http.Client
	results []result
}

func newClients(n int, ca *x509.CertPool, h2 bool) []*http.Client {
	out := make([]*http.Client, n)
	for i := range out {
		out[i] = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: ca, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2: h2,
		}}
	}
	return out
}

// run has every client LIST as fast as it can for d, each on its own
// connection, and returns the completed requests and their latencies.
func (t *target) run(token string, d time.Duration) result {
	var (
		mu       sync.Mutex
		lats     []time.Duration
		errs     atomic.Int64
		firstErr atomic.Value
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		errs.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
	}
	cpu0 := cpuTimes()
	began := time.Now()
	deadline := began.Add(d)
	pprof.Do(context.Background(), pprof.Labels("target", "client"), func(context.Context) {
		for _, c := range t.clients {
			wg.Go(func() {
				local := make([]time.Duration, 0, 8192)
				for time.Now().Before(deadline) {
					req, err := http.NewRequest(http.MethodGet, t.url, nil)
					if err != nil {
						fail(err)
						return
					}
					req.Header.Set("Authorization", "Bearer "+token)
					req.Header.Set("Accept", "application/json")
					req.Header.Set("User-Agent", userAgent)
					t0 := time.Now()
					resp, err := c.Do(req)
					if err != nil {
						fail(err)
						continue
					}
					_, err = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if err != nil {
						fail(fmt.Errorf("%s: failed to read the body: %w", t.name, err))
						continue
					}
					if resp.StatusCode != http.StatusOK {
						fail(fmt.Errorf("%s: status %d", t.name, resp.StatusCode))
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
	})
	elapsed := time.Since(began)
	first, _ := firstErr.Load().(string)
	return result{Round: benchstat.Summarize(lats, elapsed, errs.Load(), first), cpu: cpuTimes().sub(cpu0)}
}

// result is one or more rounds of one target, with the CPU time each
// process used over them.
type result struct {
	benchstat.Round
	cpu cpuUse
}

// merge pools rounds (see benchstat.Merge) and their CPU times.
func merge(rs []result) result {
	out := result{Round: benchstat.Merge(rounds(rs))}
	for _, r := range rs {
		out.cpu = out.cpu.add(r.cpu)
	}
	return out
}

// medianRatio is benchstat.MedianRatio of two targets' rounds.
func medianRatio(a, b []result) float64 { return benchstat.MedianRatio(rounds(a), rounds(b)) }

func rounds(rs []result) []benchstat.Round {
	out := make([]benchstat.Round, len(rs))
	for i, r := range rs {
		out[i] = r.Round
	}
	return out
}

func perRound(rs []result) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%.0f", r.QPS())
	}
	return strings.Join(parts, " ")
}

// sumCounters adds up the counters of name in reg whose labels include want.
func sumCounters(b *testing.B, reg *prometheus.Registry, name string, want map[string]string) float64 {
	b.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatalf("failed to gather metrics: %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetName() == k && l.GetValue() == v
				}
				if !found {
					continue metric
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// loadAverage is the first three fields of /proc/loadavg, or "unknown".
func loadAverage() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// The processes whose CPU time the benchmark reads.
const (
	cpuSelf = iota
	cpuAPIServer
	cpuEtcd
	cpuProcesses
)

// cpuUse is CPU time (user and system) by process.
type cpuUse [cpuProcesses]time.Duration

func (c cpuUse) sub(o cpuUse) cpuUse {
	for i := range c {
		c[i] -= o[i]
	}
	return c
}

func (c cpuUse) add(o cpuUse) cpuUse {
	for i := range c {
		c[i] += o[i]
	}
	return c
}

// per is process i's CPU time per request, in µs.
func (c cpuUse) per(n, i int) float64 {
	if n == 0 {
		return 0
	}
	return float64(c[i].Microseconds()) / float64(n)
}

// cpuTimes reads the CPU time of this process and of its children
// kube-apiserver and etcd (from /proc; zero where it cannot be read).
func cpuTimes() cpuUse {
	var c cpuUse
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c[cpuSelf] = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, ppid, ticks, ok := procStat(pid)
		if !ok || ppid != self {
			continue
		}
		switch comm {
		case "kube-apiserver":
			c[cpuAPIServer] += ticks
		case "etcd":
			c[cpuEtcd] += ticks
		}
	}
	return c
}

// procStat reads a process's name, parent and CPU time (utime + stime at
// the usual 100 clock ticks a second) from /proc/<pid>/stat.
func procStat(pid int) (comm string, ppid int, cpu time.Duration, ok bool) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, 0, false
	}
	s := string(raw)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return "", 0, 0, false
	}
	comm = s[open+1 : closing]
	f := strings.Fields(s[closing+1:])
	// f[0] is the state, f[1] the parent, f[11] utime and f[12] stime.
	if len(f) < 13 {
		return "", 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return comm, ppid, time.Duration(utime+stime) * 10 * time.Millisecond, true
}
