package proxy

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// keyPair is a certificate and key read from files and read again when either
// file changes, so a rotated pair applies to new handshakes without a restart.
// The files are checked at most once per checkEvery, on use.
type keyPair struct {
	certFile, keyFile string
	log               *slog.Logger
	cert              atomic.Pointer[tls.Certificate]
	nextCheck         atomic.Int64 // unix nanos

	mu              sync.Mutex
	certMod, keyMod time.Time
}

const checkEvery = time.Second

func newKeyPair(certFile, keyFile string, log *slog.Logger) (*keyPair, error) {
	kp := &keyPair{certFile: certFile, keyFile: keyFile, log: log}
	if err := kp.load(); err != nil {
		return nil, err
	}
	kp.nextCheck.Store(time.Now().Add(checkEvery).UnixNano())
	return kp, nil
}

func (kp *keyPair) load() error {
	cm, km, err := kp.modTimes()
	if err != nil {
		return err
	}
	c, err := tls.LoadX509KeyPair(kp.certFile, kp.keyFile)
	if err != nil {
		return fmt.Errorf("failed to load the key pair %s: %w", kp.certFile, err)
	}
	kp.cert.Store(&c)
	kp.certMod, kp.keyMod = cm, km
	return nil
}

func (kp *keyPair) modTimes() (time.Time, time.Time, error) {
	cs, err := os.Stat(kp.certFile)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("failed to stat %s: %w", kp.certFile, err)
	}
	ks, err := os.Stat(kp.keyFile)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("failed to stat %s: %w", kp.keyFile, err)
	}
	return cs.ModTime(), ks.ModTime(), nil
}

// current returns the pair, reloading it first when a file changed. A pair
// that fails to load is reported and the previous one kept.
func (kp *keyPair) current() (*tls.Certificate, error) {
	now := time.Now().UnixNano()
	if next := kp.nextCheck.Load(); now >= next && kp.nextCheck.CompareAndSwap(next, now+int64(checkEvery)) {
		kp.mu.Lock()
		cm, km, err := kp.modTimes()
		if err == nil && (!cm.Equal(kp.certMod) || !km.Equal(kp.keyMod)) {
			if err := kp.load(); err != nil {
				kp.log.Error("failed to reload a rotated key pair; the previous one stays", "cert", kp.certFile, "err", err)
			} else {
				kp.log.Info("key pair reloaded", "cert", kp.certFile)
			}
		}
		kp.mu.Unlock()
	}
	return kp.cert.Load(), nil
}
