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
	subscribers []func(*Compiled)
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

// Subscribe registers fn to be called, from the watcher's goroutine, with each
// new policy after it has been validated and swapped in. fn must not block for long.
func (w *Watcher) Subscribe(fn func(*Compiled)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.subscribers = append(w.subscribers, fn)
}

// digestOf is the SHA-256 of the file's bytes, zero when it cannot be read.
func digestOf(path string) [sha256.Size]byte {
	data, err := os.ReadFile(path)
	if err != nil {
		return [sha256.Size]byte{}
	}
	return sha256.Sum256(data)
}

// Reload reads the file now. A bad file keeps the running policy and returns
// the validation error. A file whose bytes are those of the last reload (or
// of startup) is not decoded again and counts no reload: it returns the error
// it had then, if any.
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
		w.reloads.WithLabelValues(ReloadFailure).Inc()
		w.lastOK.Set(0)
		msg := err.Error()
		w.lastErr.Store(&msg)
		w.log.Error("policy reload refused; the running policy stays", "file", w.cfg.Path, "running", w.Current().Hash, "err", msg)
		return err
	}
	empty := ""
	w.lastErr.Store(&empty)
	w.lastOK.Set(1)
	old := w.current.Load()
	if old != nil && old.Hash == c.Hash {
		w.reloads.WithLabelValues(ReloadUnchanged).Inc()
		return nil
	}
	w.current.Store(c)
	w.reloads.WithLabelValues(ReloadSuccess).Inc()
	w.log.Info("policy reloaded", "file", w.cfg.Path, "hash", c.Hash, "previous", old.Hash,
		"budgets", len(c.Budgets), "rateLimits", len(c.RateLimits), "flowSchemas", len(c.FlowSchemas))
	w.mu.Lock()
	subs := append([]func(*Compiled){}, w.subscribers...)
	w.mu.Unlock()
	for _, fn := range subs {
		fn(c)
	}
	return nil
}

// Run watches the policy file's directory until ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	return filewatch.Run(ctx, filewatch.Config{
		Files: []string{w.cfg.Path}, Debounce: w.cfg.Debounce, Resync: w.cfg.Resync,
		Reload: func() { _ = w.Reload() }, Logger: w.log,
	})
}
