package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/kubedefender/kubedefender/config"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/override"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/proxy"
	"github.com/kubedefender/kubedefender/version"
	"github.com/kubedefender/kubedefender/webhook"
)

// RunFunc runs a completed serve configuration until ctx is done. Tests inject
// their own to check flag handling without serving.
type RunFunc func(ctx context.Context, cfg *config.Config) error

func newServeCommand(s Streams, run RunFunc) *cobra.Command {
	if run == nil {
		run = runServe
	}
	o := config.NewServeOptions()
	cmd := &cobra.Command{
		Use:   "serve --policy FILE [--webhook-listen ADDR] [--proxy-listen ADDR --upstream URL ...]",
		Short: "Serve the admission webhook and/or the API proxy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			cfg, err := o.Complete()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return run(ctx, cfg)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// component is one long-running part of serve.
type component struct {
	name string
	run  func(ctx context.Context) error
}

// runServe wires the parts of serve. Order: the policy first (nothing serves
// without a good one), then the store and engine, then the servers.
func runServe(ctx context.Context, cfg *config.Config) error {
	log := cfg.Logger
	// client-go and k8s.io/apiserver log through klog, go-redis through its
	// own logger: both are process globals, pointed at this logger once, here.
	klog.SetSlogLogger(log.With("component", "k8s"))
	redis.SetLogger(redisLogger{log.With("component", "redis")})
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	watcher, err := policy.NewWatcher(policy.WatcherConfig{Path: cfg.Options.PolicyFile, Logger: log.With("component", "policy"), Registerer: reg})
	if err != nil {
		return err
	}
	store, storeComp, storeMode, err := newStore(cfg, reg)
	if err != nil {
		return err
	}
	if c, ok := store.(interface{ Close() error }); ok {
		// Closed only after every server has drained (runAll has returned):
		// requests finishing during shutdown still reach the store.
		defer func() { _ = c.Close() }()
	}
	engCfg := limiter.EngineConfig{Policy: watcher.Current(), Store: store, Logger: log.With("component", "limiter"), Registerer: reg}
	if rs, ok := store.(*limiter.RedisStore); ok {
		engCfg.Replicas = rs.Replicas
	}
	engine, err := limiter.NewEngine(engCfg)
	if err != nil {
		return err
	}
	// Every reload is prepared by each subscriber, then committed by all, in
	// this order: the engine, the cascade counter, the proxy.
	watcher.Subscribe("engine", policy.SubscriberFunc(engine.SetPolicy))
	log.Info("kubedefender starting", "version", version.Version, "policy", watcher.Current().Hash, "store", storeMode)

	comps := []component{
		{"policy-watcher", watcher.Run},
		storeComp,
		{"local-fallback", func(ctx context.Context) error { engine.Run(ctx); return nil }},
	}
	var casc *cascades
	if cfg.Options.WebhookListen != "" {
		// AtRoot budgets are judged by the webhook, from the cascade counts.
		casc = newCascades(cfg.Kube, log.With("component", "cascade"), watcher.Current())
		watcher.Subscribe("cascades", policy.SubscriberFunc(casc.setPolicy))
		comps = append(comps, component{"cascade", casc.run})
		c, err := newWebhookComponent(cfg, engine, reg, casc)
		if err != nil {
			return err
		}
		comps = append(comps, c)
		engine.DeclareFronts(limiter.FrontWebhook)
	}
	if cfg.Kube != nil {
		c, err := newOverrideComponent(cfg, engine, reg)
		if err != nil {
			return err
		}
		comps = append(comps, c)
	} else {
		log.Warn("no --kubeconfig and not running in a cluster: break-glass overrides are off")
	}
	if c, ok := memoryReplicaCheck(cfg, storeMode); ok {
		comps = append(comps, c) // warns when other replicas run on a memory store
	}
	var levels func() []levelStatus
	ready := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	if cfg.Options.ProxyListen != "" {
		p, err := newProxy(cfg, engine, watcher.Current(), reg)
		if err != nil {
			return err
		}
		watcher.Subscribe("proxy", p)
		comps = append(comps, component{"proxy", p.Run})
		engine.DeclareFronts(limiter.FrontProxy)
		levels = func() []levelStatus { return proxyLevels(p) }
		ready = p.Readyz() // a proxy that cannot reach its upstream is not ready
	}
	if cfg.Options.MetricsListen != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
		if casc != nil {
			ready = casc.readyz(ready) // not ready until the cascade counts have synced
		}
		mux.Handle("/readyz", ready)
		mux.Handle("/status", statusHandler(func(ctx context.Context) *replicaStatus {
			st := &replicaStatus{Replica: replicaName(), Version: version.Version, Store: storeMode,
				LastReloadError: watcher.LastError(), Engine: engine.Status(ctx, statusKeys)}
			if levels != nil {
				st.PriorityLevels = levels()
			}
			return st
		}))
		comps = append(comps, component{"metrics", httpServer(cfg.Options.MetricsListen, mux, cfg.Options.ShutdownTimeout)},
			component{"limiter-gauges", func(ctx context.Context) error { engine.RunMetrics(ctx, 0); return nil }})
	}
	return runAll(ctx, comps)
}

// newStore builds the shared store: Redis with --redis-url, else memory. It
// returns the component that keeps the store alive (sweeping idle keys, or
// Redis heartbeats and probes) and the store's mode for status.
func newStore(cfg *config.Config, reg prometheus.Registerer) (limiter.Store, component, string, error) {
	o := cfg.Options
	if o.RedisURL == "" {
		ms := limiter.NewMemoryStore(limiter.MemoryConfig{})
		return ms, component{"memory-store", func(ctx context.Context) error { ms.Run(ctx); return nil }}, "memory", nil
	}
	rs, err := limiter.NewRedisStore(limiter.RedisConfig{
		URL: o.RedisURL, Password: cfg.RedisPassword,
		TLSCAFile: o.RedisCAFile, TLSCertFile: o.RedisCertFile, TLSKeyFile: o.RedisKeyFile, TLSInsecureSkipVerify: o.RedisInsecureSkipVerify,
		KeyPrefix: o.RedisKeyPrefix, Timeout: o.RedisTimeout, Replicas: o.RedisReplicas, ReplicaID: replicaName(),
		AutoPipeline: o.RedisAutoPipeline, Logger: cfg.Logger.With("component", "redis"), Registerer: reg,
	})
	if err != nil {
		return nil, component{}, "", err
	}
	run := func(ctx context.Context) error {
		rs.Run(ctx) // heartbeats and probes; runServe closes the client last
		return nil
	}
	return rs, component{"redis-store", run}, "redis", nil
}

// newProxy builds the API proxy; its TokenReview client comes from the kube
// config when there is one (without it, bearer tokens are not accepted).
func newProxy(cfg *config.Config, engine *limiter.Engine, pol *policy.Compiled, reg prometheus.Registerer) (*proxy.Proxy, error) {
	o := cfg.Options
	pc := proxy.Config{
		Upstream: cfg.Upstream, UpstreamCAFile: o.UpstreamCAFile,
		Listen: o.ProxyListen, TLSCertFile: o.TLSCertFile, TLSKeyFile: o.TLSPrivateKeyFile,
		AuthMode: proxy.AuthMode(o.AuthMode), ClientCAFile: o.ClientCAFile,
		FrontProxyCertFile: o.FrontProxyCertFile, FrontProxyKeyFile: o.FrontProxyKeyFile,
		Engine: engine, Policy: pol, BudgetsAtProxy: o.BudgetsAt == config.BudgetsAtProxy,
		ShutdownTimeout: o.ShutdownTimeout, Logger: cfg.Logger.With("component", "proxy"), Registerer: reg,
	}
	if cfg.Kube != nil {
		kube, err := kubernetes.NewForConfig(cfg.Kube)
		if err != nil {
			return nil, fmt.Errorf("failed to build the TokenReview client: %w", err)
		}
		pc.TokenReviewClient = kube.AuthenticationV1()
	} else {
		cfg.Logger.Warn("no --kubeconfig and not running in a cluster: the proxy cannot review bearer tokens; only client certificates authenticate")
	}
	return proxy.New(pc)
}

// newOverrideComponent watches break-glass Overrides in the policy's
// breakGlass.namespace and applies them to the engine; a reload that changes
// the namespace moves the watch.
func newOverrideComponent(cfg *config.Config, engine *limiter.Engine, reg prometheus.Registerer) (component, error) {
	dyn, err := dynamic.NewForConfig(cfg.Kube)
	if err != nil {
		return component{}, fmt.Errorf("failed to build the override client: %w", err)
	}
	kube, err := kubernetes.NewForConfig(cfg.Kube)
	if err != nil {
		return component{}, fmt.Errorf("failed to build the event client: %w", err)
	}
	ctrl, err := override.NewController(override.ControllerConfig{
		Client: dyn, Events: kube.CoreV1(), Engine: engine,
		Replica: replicaName(), Logger: cfg.Logger.With("component", "breakglass"), Registerer: reg,
		SharedStore: cfg.Options.RedisURL != "",
	})
	if err != nil {
		return component{}, err
	}
	return component{"overrides", ctrl.Run}, nil
}

// redisLogger routes go-redis's own messages (dial errors, sentinel changes)
// into the structured log.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Warn(fmt.Sprintf(format, v...))
}

// replicaName names this process in status and Events: the pod name when
// running in Kubernetes, else the host name.
func replicaName() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	n, _ := os.Hostname()
	return n
}

// httpServer serves h on addr until ctx is done, then shuts down gracefully.
func httpServer(addr string, h http.Handler, grace time.Duration) func(context.Context) error {
	return func(ctx context.Context) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("failed to listen on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), grace)
			defer cancel()
			return srv.Shutdown(sctx)
		}
	}
}

// runAll runs every component until ctx is done or one fails; then it stops
// the others and returns the first error.
func runAll(ctx context.Context, comps []component) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(comps))
	for _, c := range comps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.run(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, context.Canceled) {
				errs <- fmt.Errorf("%s: %w", c.name, err)
			}
			cancel()
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// newWebhookComponent builds the admission webhook: its handler on the engine,
// a TLS server on --webhook-listen with the serving pair reloaded from disk,
// requiring the API server's client certificate with --webhook-client-ca-file
// (and warning that anyone may call it without). It listens at once so that a
// taken port fails startup.
func newWebhookComponent(cfg *config.Config, engine *limiter.Engine, reg prometheus.Registerer, casc *cascades) (component, error) {
	log := cfg.Logger.With("component", "webhook")
	h, err := webhook.NewHandler(webhook.Config{Engine: engine, Logger: log, Registerer: reg, Cascades: casc, Resolve: casc.resolve})
	if err != nil {
		return component{}, err
	}
	certs, err := webhook.NewCertReloader(webhook.CertConfig{
		CertFile: cfg.Options.TLSCertFile, KeyFile: cfg.Options.TLSPrivateKeyFile, Logger: log, Registerer: reg,
	})
	if err != nil {
		return component{}, err
	}
	var clientAuth *webhook.ClientAuth
	if cfg.Options.WebhookClientCAFile != "" {
		clientAuth, err = webhook.NewClientAuth(webhook.ClientAuthConfig{
			CAFile: cfg.Options.WebhookClientCAFile, AllowedNames: cfg.Options.WebhookClientAllowedNames, Logger: log, Registerer: reg,
		})
		if err != nil {
			return component{}, err
		}
		if len(cfg.Options.WebhookClientAllowedNames) == 0 {
			log.Warn("the webhook accepts any client certificate its client CA signed: if --webhook-client-ca-file is the cluster CA, "+
				"every kubelet's and user's certificate can post AdmissionReviews that charge budgets and trip breakers; "+
				"set --webhook-client-allowed-names to the API server's client certificate name (e.g. kube-apiserver)",
				"clientCA", cfg.Options.WebhookClientCAFile)
		}
	} else {
		log.Warn("the webhook does not authenticate its callers: anyone who can reach --webhook-listen can post AdmissionReviews "+
			"that charge budgets, trip breakers (a Manual breaker then denies every real delete it covers) and mark objects as already charged; "+
			"set --webhook-client-ca-file to the CA of the API server's client certificate (see the README's install section)",
			"addr", cfg.Options.WebhookListen)
	}
	srv, err := webhook.NewServer(webhook.ServerConfig{
		Addr: cfg.Options.WebhookListen, Handler: h, Certificates: certs, ClientAuth: clientAuth,
		ShutdownTimeout: cfg.Options.ShutdownTimeout, Logger: log,
	})
	if err != nil {
		return component{}, err
	}
	return component{"webhook", srv.Run}, nil
}

func proxyLevels(p *proxy.Proxy) []levelStatus {
	var out []levelStatus
	for _, l := range p.Levels() {
		out = append(out, levelStatus{Name: l.Name, Exempt: l.Exempt, SeatsInUse: l.SeatsInUse, SeatsLimit: l.Seats, Queued: l.Waiting})
	}
	return out
}
