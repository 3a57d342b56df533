package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/limiter"
	"github.com/kubedefender/kubedefender/limiter/redisstore"
	"github.com/kubedefender/kubedefender/policy"
)

// splitManifests splits a multi-document YAML stream into objects.
func splitManifests(t *testing.T, data []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("failed to decode a manifest: %v\n%s", err, doc)
		}
		if obj != nil {
			out = append(out, obj)
		}
	}
	return out
}

// findManifest returns the object of that kind and name, failing t when there is none.
func findManifest(t *testing.T, objs []map[string]any, kind, name string) map[string]any {
	t.Helper()
	for _, o := range objs {
		if o["kind"] == kind && manifestField(o, "metadata", "name") == name {
			return o
		}
	}
	t.Fatalf("no %s %s in the manifests", kind, name)
	return nil
}

// manifestField walks maps and lists (by index) along path; nil when something is missing.
func manifestField(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

// redisServer is a redis-server process started from a config file.
type redisServer struct {
	cmd  *exec.Cmd
	done chan error
}

func startRedisWithConfig(t *testing.T, conf string, port int) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is not installed: run `make redis` (apt-get install redis-server): %v", err)
	}
	cmd := exec.Command("redis-server", conf)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("failed to start redis-server: %v", err)
	}
	s := &redisServer{cmd: cmd, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() { s.stop(syscall.SIGKILL) })
	framework.Eventually(t, 10*time.Second, "redis-server to accept connections", func(context.Context) (bool, error) {
		select {
		case err := <-s.done:
			s.done <- err
			log, _ := os.ReadFile(filepath.Join(filepath.Dir(conf), "redis.log"))
			return false, fmt.Errorf("redis-server exited at start: %w\n%s", err, log)
		default:
		}
		c, dialErr := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if dialErr == nil {
			_ = c.Close()
		}
		return dialErr == nil, nil // not listening yet: try again
	})
	return s
}

// stop sends sig and waits for the process to exit. Stopping twice is a no-op.
func (s *redisServer) stop(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	<-s.done
	s.cmd = nil
}

// TestShippedRedisKeepsAManualBreakerOpenAcrossARestart starts redis-server
// with the redis.conf shipped in deploy/redis (only where it listens and its
// data directory changed), trips a Manual breaker through the limiter's Redis
// store, restarts Redis as a pod restart does (SIGTERM), and checks the
// breaker is still Open. Without the append-only file the restart closes it.
func TestShippedRedisKeepsAManualBreakerOpenAcrossARestart(t *testing.T) {
	root := repoRoot(t)
	data, err := os.ReadFile(filepath.Join(root, "deploy", "redis", "redis.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	objs := splitManifests(t, data)
	shipped, _ := manifestField(findManifest(t, objs, "ConfigMap", "kubedefender-redis-config"), "data", "redis.conf").(string)

	// Given the shipped Redis runs that redis.conf with its data on the volume
	dep := findManifest(t, objs, "Deployment", "kubedefender-redis")
	pod := manifestField(dep, "spec", "template", "spec")
	command := fmt.Sprint(manifestField(pod, "containers", 0, "command"))
	mounts := fmt.Sprint(manifestField(pod, "containers", 0, "volumeMounts"))
	volumes := fmt.Sprint(manifestField(pod, "volumes"))
	for _, want := range []string{"redis-server /etc/redis/redis.conf", "--requirepass"} {
		if !strings.Contains(command, want) {
			t.Fatalf("the Redis container's command %s lacks %q: the test would not run what is shipped", command, want)
		}
	}
	for _, want := range []string{"mountPath:/etc/redis", "mountPath:/data"} {
		if !strings.Contains(mounts, want) {
			t.Fatalf("the Redis container's mounts %s lack %q", mounts, want)
		}
	}
	if !strings.Contains(volumes, "claimName:kubedefender-redis-data") || !strings.Contains(volumes, "name:kubedefender-redis-config") {
		t.Fatalf("the Redis volumes %s: want the config from the ConfigMap and the data on the PersistentVolumeClaim", volumes)
	}
	dirLine := regexp.MustCompile(`(?m)^dir /data$`)
	if !dirLine.MatchString(shipped) {
		t.Fatalf("the shipped redis.conf does not keep its data in /data (the volume):\n%s", shipped)
	}

	// And a redis-server started with it on loopback, its data dir a temp dir
	dir := t.TempDir()
	port := freePort(t)
	conf := dirLine.ReplaceAllString(shipped, "dir "+dir) + fmt.Sprintf("\nport %d\nbind 127.0.0.1\nlogfile %s\n", port, filepath.Join(dir, "redis.log"))
	confFile := filepath.Join(dir, "redis.conf")
	writeTestFile(t, confFile, conf+"requirepass s3cret\n")
	srv := startRedisWithConfig(t, confFile, port)

	pol, err := policy.Parse("policy.yaml", []byte(`apiVersion: kubedefender.io/v1alpha1
kind: DefenderPolicy
metadata: {name: aof}
spec:
  budgets:
  - name: pod-deletes
    match: {verbs: [delete], resources: [pods]}
    per: [namespace]
    windows: [{window: 1h, limit: 2}]
    breaker: {recovery: Manual}
    onStoreFailure: Allow
`))
	if err != nil {
		t.Fatal(err)
	}
	decide := func(name string) limiter.Decision {
		t.Helper()
		rs, err := redisstore.NewRedisStore(redisstore.RedisConfig{URL: fmt.Sprintf("redis://127.0.0.1:%d/0", port), Password: "s3cret", Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = rs.Close() }()
		e, err := limiter.NewEngine(limiter.EngineConfig{Policy: pol, Store: rs})
		if err != nil {
			t.Fatal(err)
		}
		return e.Decide(context.Background(), &limiter.Attributes{Attributes: policy.Attributes{
			Verb: "delete", Resource: "pods", Namespace: "prod", Name: name, User: "alice"}, Checks: limiter.CheckBudgets})
	}

	// When three deletes trip the Manual breaker of namespace prod
	for i, want := range []bool{true, true, false} {
		if d := decide(fmt.Sprintf("p%d", i)); d.Allowed != want || d.Fallback {
			t.Fatalf("delete %d: allowed %v fallback %v (%s), want allowed %v from Redis", i, d.Allowed, d.Fallback, d.Message, want)
		}
	}
	if d := decide("p3"); d.Code != 403 || !errors.Is(d.Err, limiter.ErrBreakerOpen) {
		t.Fatalf("before the restart: code %d err %v, want 403 from an Open Manual breaker", d.Code, d.Err)
	}
	// And Redis restarts as a pod restart stops it (SIGTERM), on the same data
	srv.stop(syscall.SIGTERM)
	startRedisWithConfig(t, confFile, port)

	// Then the breaker is still Open: the next delete is refused with 403
	d := decide("p4")
	if d.Fallback || d.Code != 403 || !errors.Is(d.Err, limiter.ErrBreakerOpen) {
		t.Fatalf("after the restart: allowed %v code %d err %v fallback %v (%s); want 403 from the still Open Manual breaker", d.Allowed, d.Code, d.Err, d.Fallback, d.Message)
	}
}
