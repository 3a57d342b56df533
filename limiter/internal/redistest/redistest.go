// Package redistest starts real redis-server processes for tests: a single
// node, or a Redis Cluster of several masters, on loopback ports. When
// redis-server is missing it installs it with apt-get (the test runs as root
// in CI); when that fails the test fails with a clear message. It never skips.
//
// Every process is started with Pdeathsig, so it dies with the test binary,
// and is killed by t.Cleanup.
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ensureInstalled makes sure redis-server, redis-cli and redis-benchmark are
// on PATH, installing the redis-server package with apt-get when they are
// not. It fails the test when the install fails.
func ensureInstalled(t testing.TB) {
	t.Helper()
	if missing() == "" {
		return
	}
	t.Logf("redis-server not found; installing it with apt-get")
	cmd := exec.Command("sh", "-c",
		"apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=300 redis-server redis-tools")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("redistest: redis-server is not installed and `apt-get install -y redis-server` failed (%v); install redis-server (it provides redis-cli and redis-benchmark) and run again:\n%s", err, tail(string(out), 2000))
	}
	if m := missing(); m != "" {
		t.Fatalf("redistest: %s is still missing after installing redis-server with apt-get", m)
	}
}

func missing() string {
	for _, bin := range []string{"redis-server", "redis-cli", "redis-benchmark"} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin
		}
	}
	return ""
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// Server is one redis-server process on a loopback port.
type Server struct {
	t       testing.TB
	Port    int
	dir     string
	args    []string
	opts    Options
	cmd     *exec.Cmd
	waitErr chan error
}

// Options tune a Server.
type Options struct {
	// Args are extra redis-server arguments, e.g. "--cluster-enabled", "yes".
	Args []string
	// Config is written to a redis.conf that is passed first (Sentinel needs
	// a config file it can rewrite).
	Config string
	// Sentinel starts the process in Sentinel mode.
	Sentinel bool
	// TLS, when set, serves TLS only (no plain port) on Port with these files;
	// clients need not present a certificate.
	TLS *TLSFiles
}

// Start starts a redis-server and waits until it answers PING. t.Cleanup
// kills it.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	ensureInstalled(t)
	s := &Server{t: t, dir: t.TempDir(), args: opts.Args, opts: opts}
	for attempt := 0; ; attempt++ {
		s.Port = freePort(t) // with its cluster bus port, Port+10000, free too
		err := s.start()
		if err == nil {
			break
		}
		if attempt == 5 {
			t.Fatalf("redistest: %v", err)
		}
	}
	t.Cleanup(s.Kill)
	return s
}

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// URL is redis://127.0.0.1:port/0 (rediss:// when the server serves TLS).
func (s *Server) URL() string {
	if s.opts.TLS != nil {
		return "rediss://" + s.Addr() + "/0"
	}
	return "redis://" + s.Addr() + "/0"
}

func (s *Server) start() error {
	var args []string
	if s.opts.Config != "" || s.opts.Sentinel {
		conf := filepath.Join(s.dir, "redis.conf")
		if err := os.WriteFile(conf, []byte(s.opts.Config+"\n"), 0o600); err != nil {
			return fmt.Errorf("failed to write %s: %w", conf, err)
		}
		args = append(args, conf)
	}
	if s.opts.Sentinel {
		args = append(args, "--sentinel")
	}
	if f := s.opts.TLS; f != nil {
		args = append(args, "--port", "0", "--tls-port", strconv.Itoa(s.Port), "--tls-cert-file", f.CertFile,
			"--tls-key-file", f.KeyFile, "--tls-ca-cert-file", f.CAFile, "--tls-auth-clients", "no")
	} else {
		args = append(args, "--port", strconv.Itoa(s.Port))
	}
	args = append(args, "--bind", "127.0.0.1", "--protected-mode", "no",
		"--dir", s.dir, "--logfile", filepath.Join(s.dir, "redis.log"))
	if !s.opts.Sentinel {
		args = append(args, "--save", "", "--appendonly", "no", "--enable-debug-command", "yes")
	}
	args = append(args, s.args...)
	cmd := exec.Command("redis-server", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("failed to start redis-server: %w", err)
	}
	s.cmd = cmd
	s.waitErr = make(chan error, 1)
	go func() { s.waitErr <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-s.waitErr:
			s.cmd = nil
			return fmt.Errorf("redis-server on port %d exited at start (%w); log:\n%s", s.Port, err, s.log())
		default:
		}
		if s.ping() == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Kill()
	return fmt.Errorf("redis-server on port %d did not answer PING within 10s; log:\n%s", s.Port, s.log())
}

func (s *Server) log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return tail(string(b), 2000)
}

func (s *Server) ping() error {
	c := redis.NewClient(s.clientOptions(&redis.Options{Addr: s.Addr(), DialTimeout: 200 * time.Millisecond, MaxRetries: -1,
		DisableIdentity: true, Protocol: 2}))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	return c.Ping(ctx).Err()
}

// Kill kills the server (SIGKILL) and waits for it to exit. Killing a
// stopped server is a no-op.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGCONT)
	_ = s.cmd.Process.Kill()
	if err := <-s.waitErr; err != nil {
		s.t.Logf("redistest: redis-server on port %d: %v", s.Port, err) // killed: expected
	}
	s.cmd = nil
}

// Restart starts the server again on the same port (after Kill) with an
// empty data set.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	_ = os.Remove(filepath.Join(s.dir, "dump.rdb"))
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond) // the port may linger briefly
	}
	s.t.Fatalf("redistest: failed to restart: %v", err)
}

func (s *Server) clientOptions(o *redis.Options) *redis.Options {
	if s.opts.TLS != nil {
		conf, err := s.opts.TLS.clientTLS()
		if err != nil {
			s.t.Fatalf("redistest: %v", err)
		}
		o.TLSConfig = conf
	}
	return o
}

// Client returns a plain client to the server, closed by t.Cleanup.
func (s *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(s.clientOptions(&redis.Options{Addr: s.Addr(), Protocol: 2, DisableIdentity: true}))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// freePort returns a loopback port that is free, together with port+10000
// (the cluster bus port).
func freePort(t testing.TB) int {
	t.Helper()
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("redistest: failed to find a free port: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if p+10000 > 65535 {
			continue
		}
		bus, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+10000)))
		if err != nil {
			continue
		}
		_ = bus.Close()
		return p
	}
	t.Fatalf("redistest: failed to find a free port pair")
	return 0
}

// StartSentinel starts one Sentinel monitoring master under name, and waits
// until it knows the master's address.
func StartSentinel(t testing.TB, name string, master *Server) *Server {
	t.Helper()
	s := Start(t, Options{Sentinel: true, Config: fmt.Sprintf(
		"sentinel monitor %s 127.0.0.1 %d 1\nsentinel down-after-milliseconds %s 1000\n", name, master.Port, name)})
	c := s.Client(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		addr, err := c.Do(context.Background(), "SENTINEL", "get-master-addr-by-name", name).StringSlice()
		if err == nil && len(addr) == 2 && addr[1] == strconv.Itoa(master.Port) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: sentinel does not know master %s after 10s: %v %v", name, addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Cluster is a Redis Cluster of masters only, on loopback.
type Cluster struct {
	Servers []*Server
}

// Addrs lists host:port of every master.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		out[i] = s.Addr()
	}
	return out
}

// URL is redis+cluster://host1:port,host2:port,...
func (c *Cluster) URL() string { return "redis+cluster://" + strings.Join(c.Addrs(), ",") }

// StartCluster starts n masters with cluster mode on, joins them with
// `redis-cli --cluster create --cluster-replicas 0` and waits until every
// node reports cluster_state:ok.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{}
	for i := 0; i < n; i++ {
		dir := t.TempDir()
		c.Servers = append(c.Servers, Start(t, Options{Args: []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
			"--cluster-node-timeout", "2000",
		}}))
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.Command("redis-cli", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redistest: failed to create the cluster (redis-cli %s): %v\n%s", strings.Join(args, " "), err, tail(string(out), 2000))
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, s := range c.Servers {
		cl := s.Client(t)
		for {
			info, err := cl.ClusterInfo(context.Background()).Result()
			if err == nil && clusterOK(info) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("redistest: cluster node %s not ok after 20s: %v\n%s", s.Addr(), err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

func clusterOK(info string) bool {
	sc := bufio.NewScanner(strings.NewReader(info))
	state, known := false, false
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "cluster_state:ok" {
			state = true
		}
		if strings.HasPrefix(line, "cluster_known_nodes:") {
			known = line != "cluster_known_nodes:1"
		}
	}
	return state && known
}
