// Command etcd is a single-member etcd server, embedded from
// go.etcd.io/etcd/server/v3, for KubeDefender's end-to-end tests. It is not a
// production etcd: one member, no auth, loopback URLs only.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	dataDir := flag.String("data-dir", "", "directory for the member's data (required)")
	clientURL := flag.String("listen-client-urls", "http://127.0.0.1:2379", "URL to serve clients on")
	peerURL := flag.String("listen-peer-urls", "http://127.0.0.1:2380", "URL to serve peers on")
	quotaBytes := flag.Int64("quota-backend-bytes", 0, "backend size quota (0: etcd default)")
	unsafeNoSync := flag.Bool("unsafe-no-fsync", true, "skip fsync; fine for throwaway test data")
	flag.Parse()
	if *dataDir == "" {
		return fmt.Errorf("failed to start: --data-dir is required")
	}
	cu, err := url.Parse(*clientURL)
	if err != nil {
		return fmt.Errorf("failed to parse --listen-client-urls: %w", err)
	}
	pu, err := url.Parse(*peerURL)
	if err != nil {
		return fmt.Errorf("failed to parse --listen-peer-urls: %w", err)
	}

	cfg := embed.NewConfig()
	cfg.Name = "e2e"
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = *unsafeNoSync
	cfg.QuotaBackendBytes = *quotaBytes
	cfg.LogLevel = "warn"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("failed to start etcd: %w", err)
	}
	defer e.Close()

	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "etcd: ready, serving clients on %s\n", cu)
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		return fmt.Errorf("failed to become ready within 60s")
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "etcd: %s received, stopping\n", s)
		return nil
	case err := <-e.Err():
		return fmt.Errorf("failed to serve: %w", err)
	}
}
