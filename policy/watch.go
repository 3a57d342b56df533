package policy

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubedefender/kubedefender/filewatch"
)

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	// Path of the policy file. Its directory is watched, so a ConfigMap mount
	// (the file replaced through a symlink swap) is seen.
	Path string
	// Logger receives one line per reload; nil discards.
	Logger *slog.Logger
	// Registerer takes the reload metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Debounce groups the bursts of events an editor or kubelet makes; default 200ms.
	Debounce time.Duration
	// Resync re-reads the file this often even without events; default 1m.
	Resync time.Duration
}

// Watcher holds the running policy and replaces it when the file changes:
// validate-then-swap, the last good policy kept on failure.
type Watcher struct {
	cfg     WatcherConfig
	log     *slog.Logger
	current atomic.Pointer[Compiled]
	reloads *prometheus.CounterVec
	lastOK  prometheus.Gauge
	lastErr atomic.Pointer[string]
	// read is the digest of the file's bytes at the last reload (zero when
	// unreadable): bytes seen before are not read again, so a resync, an
	// event for another file of the directory or one at startup counts no
	// reload. Guarded by reloadMu, which serializes reloads.
	reloadMu sync.Mutex
	read     [sha256.Size]byte

	mu          sync.Mutex
	subscribers []subscription
}

// Subscriber takes part in policy reloads, in two phases, as the API
// server's queue sets do with BeginConfigChange and Complete.
//
// PreparePolicy is called from the watcher's goroutine with each new policy,
// after it has been validated and before anything runs it. It builds
// everything the subscriber needs to run c and changes nothing that runs; an
// error refuses c: the reload fails, no subscriber commits and the running
// policy stays. commit makes c the subscriber's running policy; it cannot
// fail and must not block for long. It is called once, after every
// subscriber has prepared, or never (another subscriber refused c: the
// prepared state is dropped). Reloads are serialised: no PreparePolicy comes
// between a prepare and its commit.
type Subscriber interface {
	PreparePolicy(c *Compiled) (commit func(), err error)
}

// SubscriberFunc adapts a subscriber that cannot refuse a policy: it
// prepares nothing and is called with the new policy at commit.
type SubscriberFunc func(*Compiled)

// PreparePolicy returns a commit that calls f with c.
func (f SubscriberFunc) PreparePolicy(c *Compiled) (func(), error) {
	return func() { f(c) }, nil
}

type subscription struct {
	name string
	s    Subscriber
}

// Reload results, the values of the result label.
const (
	ReloadSuccess   = "success"
	ReloadFailure   = "failure"
	ReloadUnchanged = "unchanged"
)

// NewWatcher loads the policy at cfg.Path; it fails when that policy is bad,
// since a process must not start without a good one.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.Debounce <= 0 {
		cfg.Debounce = 200 * time.Millisecond
	}
	if cfg.Resync <= 0 {
		cfg.Resync = time.Minute
	}
	w := &Watcher{cfg: cfg, log: cfg.Logger}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	w.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kubedefender", Subsystem: "policy", Name: "reloads_total",
		Help: "Policy reloads after the file changed, by result: success, failure (the running policy was kept) or unchanged (new bytes, same policy).",
	}, []string{"result"})
	for _, r := range []string{ReloadSuccess, ReloadFailure, ReloadUnchanged} {
		w.reloads.WithLabelValues(r)
	}
	w.lastOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "kubedefender", Subsystem: "policy", Name: "last_reload_successful",
		Help: "1 when the policy file on disk is the running policy, 0 while its content is refused (the last good policy runs).",
	})
	w.lastOK.Set(1)
	w.read = digestOf(cfg.Path)
	c, err := Load(cfg.Path)
	if err != nil {
		return nil, err
	}
	w.current.Store(c)
	if cfg.Registerer != nil {
		hash := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "kubedefender", Subsystem: "policy", Name: "rules",
			Help: "Rules in the running policy (budgets + rate limits + flow schemas).",
		}, func() float64 {
			c := w.current.Load()
			return float64(len(c.Budgets) + len(c.RateLimits) + len(c.FlowSchemas))
		})
		if err := registerAll(cfg.Registerer, w.reloads, w.lastOK, hash); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func registerAll(r prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("failed to register policy metrics: %w", err)
		}
	}
	return nil
}

// Current returns the running policy. Never nil.
func (w *Watcher) Current() *Compiled { return w.current.Load() }

// LastError returns the message of the last failed reload, or "" when the last
// reload attempt succeeded.
func (w *Watcher) LastError() string {
	if p := w.lastErr.Load(); p != nil {
		return *p
	}
	return ""
}

// Subscribe makes s take part in every later reload (see Subscriber); name
// says who it is in LastError and the log when it refuses a policy.
// Subscribers prepare and commit in the order they subscribed. The policy
// running when s subscribes is not passed to it: s starts from Current.
func (w *Watcher) Subscribe(name string, s Subscriber) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.subscribers = append(w.subscribers, subscription{name: name, s: s})
}

// digestOf is the SHA-256 of the file's bytes, zero when it cannot be read.
func digestOf(path string) [sha256.Size]byte {
	data, err := os.ReadFile(path)
	if err != nil {
		return [sha256.Size]byte{}
	}
	return sha256.Sum256(data)
}

// Reload reads the file now. A bad file, or a policy a subscriber refuses,
// keeps the running policy and returns the error. A file whose bytes are
// those of the last reload (or of startup) is not decoded again and counts
// no reload: it returns the error it had then, if any.
func (w *Watcher) Reload() error {
	w.reloadMu.Lock()
	defer w.reloadMu.Unlock()
	d := digestOf(w.cfg.Path)
	if d != [sha256.Size]byte{} && d == w.read {
		if msg := w.LastError(); msg != "" {
			return fmt.Errorf("policy file unchanged since it was refused: %s", msg)
		}
		return nil
	}
	w.read = d
	c, err := Load(w.cfg.Path)
	if err != nil {
		return w.refuse(err)
	}
	old := w.current.Load()
	if old.Hash == c.Hash {
		w.succeed(ReloadUnchanged)
		return nil
	}
	commits, err := w.prepare(c)
	if err != nil {
		return w.refuse(err)
	}
	for _, commit := range commits {
		commit()
	}
	w.current.Store(c)
	w.succeed(ReloadSuccess)
	w.log.Info("policy reloaded", "file", w.cfg.Path, "hash", c.Hash, "previous", old.Hash,
		"budgets", len(c.Budgets), "rateLimits", len(c.RateLimits), "flowSchemas", len(c.FlowSchemas))
	return nil
}

// prepare asks every subscriber to prepare c and returns their commits, or
// the first refusal (naming the subscriber).
func (w *Watcher) prepare(c *Compiled) ([]func(), error) {
	w.mu.Lock()
	subs := append([]subscription(nil), w.subscribers...)
	w.mu.Unlock()
	commits := make([]func(), 0, len(subs))
	for _, sub := range subs {
		commit, err := sub.s.PreparePolicy(c)
		if err != nil {
			return nil, fmt.Errorf("%s refused policy %s: %w", sub.name, c.Hash, err)
		}
		commits = append(commits, commit)
	}
	return commits, nil
}

// refuse records a failed reload: the running policy stays.
func (w *Watcher) refuse(err error) error {
	w.reloads.WithLabelValues(ReloadFailure).Inc()
	w.lastOK.Set(0)
	msg := err.Error()
	w.lastErr.Store(&msg)
	w.log.Error("policy reload refused; the running policy stays", "file", w.cfg.Path, "running", w.Current().Hash, "err", msg)
	return err
}

// succeed records a reload whose file is now the running policy.
func (w *Watcher) succeed(result string) {
	empty := ""
	w.lastErr.Store(&empty)
	w.lastOK.Set(1)
	w.reloads.WithLabelValues(result).Inc()
}

// Run watches the policy file's directory until ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	return filewatch.Run(ctx, filewatch.Config{
		Files: []string{w.cfg.Path}, Debounce: w.cfg.Debounce, Resync: w.cfg.Resync,
		Reload: func() { _ = w.Reload() }, Logger: w.log,
	})
}
