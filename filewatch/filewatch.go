package filewatch

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/utils/clock"
)

// Config says what to watch and what to do on a change.
type Config struct {
	// Files to watch; their directories are watched.
	Files []string
	// Debounce groups a burst of events (an editor's, the kubelet's) into one
	// Reload after the events settle.
	Debounce time.Duration
	// Resync calls Reload this often even without events; 0 disables it.
	Resync time.Duration
	// Reload is called from Run's goroutine; it reports its own errors.
	Reload func()
	// Logger receives watch errors; nil discards.
	Logger *slog.Logger
	// Clock times Debounce and Resync; nil is real time.
	Clock clock.WithTicker
}

// Run watches until ctx is done. It returns an error only when the watch
// cannot start.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("failed to watch files: %w", err)
	}
	defer func() { _ = fw.Close() }()
	dirs := map[string]bool{}
	for _, f := range cfg.Files {
		d := filepath.Dir(f)
		if dirs[d] {
			continue
		}
		dirs[d] = true
		if err := fw.Add(d); err != nil {
			return fmt.Errorf("failed to watch directory %s: %w", d, err)
		}
	}
	return loop(ctx, cfg, fw.Events, fw.Errors)
}

// loop turns the watch's events into Reload calls until ctx is done or the
// watch closes: a Reload once no event has come for Debounce (a chmod is not
// a change), and one every Resync. cfg is defaulted.
func loop(ctx context.Context, cfg Config, events <-chan fsnotify.Event, errs <-chan error) error {
	var resync <-chan time.Time
	if cfg.Resync > 0 {
		t := cfg.Clock.NewTicker(cfg.Resync)
		defer t.Stop()
		resync = t.C()
	}
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			if ev.Op != fsnotify.Chmod {
				debounce = cfg.Clock.After(cfg.Debounce)
			}
		case err, ok := <-errs:
			if !ok {
				return nil
			}
			cfg.Logger.Error("file watch error", "files", cfg.Files, "err", err)
		case <-debounce:
			debounce = nil
			cfg.Reload()
		case <-resync:
			cfg.Reload()
		}
	}
}
