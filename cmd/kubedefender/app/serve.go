package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	"github.com/kubedefender/kubedefender/limiter/redisstore"
	"github.com/kubedefender/kubedefender/override"
	"github.com/kubedefender/kubedefender/policy"
	"github.com/kubedefender/kubedefender/proxy"
	"github.com/kubedefender/kubedefender/serving"
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
	backend, err := newStore(cfg, reg)
	if err != nil {
		return err
	}
	// Closed only after every server has drained (runAll has returned):
	// requests finishing during shutdown still reach the store.
	defer func() { _ = backend.Close() }()
	storeMode := backend.Mode
	engine, err := limiter.NewEngine(limiter.EngineConfig{Policy: watcher.Current(), Store: backend.Store, Replicas: backend.Replicas,
		Logger: log.With("component", "limiter"), Registerer: reg})
	if err != nil {
		return err
	}
	// Every reload is prepared by each subscriber, then committed by all, in
	// this order: the engine, the cascade counter, the proxy.
	watcher.Subscribe("engine", engine)
	log.Info("kubedefender starting", "version", version.Version, "policy", watcher.Current().Hash, "store", storeMode)

	comps := []component{
		{"policy-watcher", watcher.Run},
		// Sweeping idle keys, or Redis heartbeats and probes; closed above.
		{storeMode + "-store", func(ctx context.Context) error { backend.Run(ctx); return nil }},
		{"local-fallback", func(ctx context.Context) error { engine.Run(ctx); return nil }},
	}
	certs, certsComp, err := newServingCertificates(cfg, reg)
	if err != nil {
		return err
	}
	if certs != nil {
		comps = append(comps, certsComp)
	}
	var casc *cascades
	if cfg.Options.WebhookListen != "" {
		// AtRoot budgets are judged by the webhook, from the cascade counts.
		casc = newCascades(cfg.Kube, log.With("component", "cascade"), watcher.Current())
		watcher.Subscribe("cascades", policy.SubscriberFunc(casc.setPolicy))
		comps = append(comps, component{"cascade", casc.run})
		c, err := newWebhookComponents(cfg, engine, reg, casc, certs)
		if err != nil {
			return err
		}
		comps = append(comps, c...)
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
		p, err := newProxy(cfg, engine, watcher.Current(), reg, certs)
		if err != nil {
			return err
		}
		watcher.Subscribe("proxy", p)
		sc, err := p.ServerConfig(cfg.Options.ProxyListen)
		if err != nil {
			return err
		}
		srv, err := serving.New(sc)
		if err != nil {
			return err
		}
		comps = append(comps, component{"proxy", srv.Run}, component{"proxy-certificates", p.Run})
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
		srv, err := serving.New(serving.Config{Name: "metrics", Addr: cfg.Options.MetricsListen, Handler: mux,
			ReadHeaderTimeout: 10 * time.Second, ShutdownTimeout: cfg.Options.ShutdownTimeout, Logger: log.With("component", "metrics")})
		if err != nil {
			return err
		}
		comps = append(comps, component{"metrics", srv.Run},
			component{"limiter-gauges", func(ctx context.Context) error { engine.RunMetrics(ctx, 0); return nil }})
	}
	return runAll(ctx, comps)
}

// newStore builds the shared store: Redis with --redis-url, else memory,
// with what runServe needs to run and close it.
func newStore(cfg *config.Config, reg prometheus.Registerer) (limiter.Backend, error) {
	o := cfg.Options
	if o.RedisURL == "" {
		return limiter.NewMemoryBackend(limiter.MemoryConfig{}), nil
	}
	return redisstore.NewBackend(redisstore.RedisConfig{
		URL: o.RedisURL, Password: cfg.RedisPassword,
		TLSCAFile: o.RedisCAFile, TLSCertFile: o.RedisCertFile, TLSKeyFile: o.RedisKeyFile, TLSInsecureSkipVerify: o.RedisInsecureSkipVerify,
		KeyPrefix: o.RedisKeyPrefix, Timeout: o.RedisTimeout, Replicas: o.RedisReplicas, ReplicaID: replicaName(),
		AutoPipeline: o.RedisAutoPipeline, Logger: cfg.Logger.With("component", "redis"), Registerer: reg,
	})
}

// newProxy builds the API proxy; its TokenReview client comes from the kube
// config when there is one (without it, bearer tokens are not accepted).
func newProxy(cfg *config.Config, engine *limiter.Engine, pol *policy.Compiled, reg prometheus.Registerer, certs *serving.CertKey) (*proxy.Proxy, error) {
	o := cfg.Options
	pc := proxy.Config{
		Upstream: cfg.Upstream, UpstreamCAFile: o.UpstreamCAFile, Serving: certs,
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
			if err := c.run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				errs <- fmt.Errorf("%s: %w", c.name, err)
			}
			cancel()
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// newServingCertificates loads the serving pair of --tls-cert-file once for
// every listener that serves it (the webhook and the proxy share it, and its
// files are watched once), with the component that reloads it; nil when
// nothing serves TLS. Its reloads are counted as the webhook's, as they were
// when only the webhook counted them.
func newServingCertificates(cfg *config.Config, reg prometheus.Registerer) (*serving.CertKey, component, error) {
	o := cfg.Options
	if o.WebhookListen == "" && o.ProxyListen == "" {
		return nil, component{}, nil
	}
	cc := serving.CertKeyConfig{Purpose: "serving", CertFile: o.TLSCertFile, KeyFile: o.TLSPrivateKeyFile, Logger: cfg.Logger.With("component", "tls")}
	if o.WebhookListen != "" {
		cc.Registerer, cc.MetricsSubsystem = reg, "webhook"
	}
	certs, err := serving.NewCertKey(cc)
	if err != nil {
		return nil, component{}, err
	}
	return certs, component{"serving-certificate", certs.Run}, nil
}

// newWebhookComponents builds the admission webhook: its handler on the
// engine, a TLS server on --webhook-listen with the serving pair, requiring
// the API server's client certificate with --webhook-client-ca-file (and
// warning that anyone may call it without), and the component that reloads
// that CA. It listens at once so that a taken port fails startup.
func newWebhookComponents(cfg *config.Config, engine *limiter.Engine, reg prometheus.Registerer, casc *cascades, certs *serving.CertKey) ([]component, error) {
	log := cfg.Logger.With("component", "webhook")
	h, err := webhook.NewHandler(webhook.Config{Engine: engine, Logger: log, Registerer: reg, Cascades: casc, Resolve: casc.resolve})
	if err != nil {
		return nil, err
	}
	var comps []component
	var clientAuth *webhook.ClientAuth
	if cfg.Options.WebhookClientCAFile != "" {
		ca, err := serving.NewCA(serving.CAConfig{Purpose: "webhook client CA", File: cfg.Options.WebhookClientCAFile, Logger: log,
			Registerer: reg, MetricsSubsystem: "webhook"})
		if err != nil {
			return nil, err
		}
		comps = append(comps, component{"webhook-client-ca", ca.Run})
		clientAuth, err = webhook.NewClientAuth(webhook.ClientAuthConfig{CA: ca, AllowedNames: cfg.Options.WebhookClientAllowedNames, Registerer: reg})
		if err != nil {
			return nil, err
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
			"set --webhook-client-ca-file to the CA of the API server's client certificate (see docs/install.md)",
			"addr", cfg.Options.WebhookListen)
	}
	srv, err := webhook.NewServer(webhook.ServerConfig{
		Addr: cfg.Options.WebhookListen, Handler: h, Certificates: certs, ClientAuth: clientAuth,
		ShutdownTimeout: cfg.Options.ShutdownTimeout, Logger: log, Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	return append(comps, component{"webhook", srv.Run}), nil
}

func proxyLevels(p *proxy.Proxy) []levelStatus {
	var out []levelStatus
	for _, l := range p.Levels() {
		out = append(out, levelStatus{Name: l.Name, Exempt: l.Exempt, SeatsInUse: l.SeatsInUse, SeatsLimit: l.Seats, Queued: l.Waiting})
	}
	return out
}
