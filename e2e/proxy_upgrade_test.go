package e2e

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport/spdy"
	streamhttp "k8s.io/streaming/pkg/httpstream"
	streamspdy "k8s.io/streaming/pkg/httpstream/spdy"
	"k8s.io/streaming/pkg/httpstream/wsstream"

	"github.com/kubedefender/kubedefender/e2e/framework"
	"github.com/kubedefender/kubedefender/proxy"
)

const echoProtocol = "echo.kubedefender.io"

// upgradeBackend is an upstream that speaks both upgrade protocols of
// exec/attach/port-forward with Kubernetes' own streaming libraries: SPDY/3.1
// (every stream the client opens is echoed back) and WebSocket with
// Kubernetes channel framing (channel 0 echoed back). It records who the
// front proxy said the user was. kube-apiserver cannot serve exec without a
// kubelet, so this stands in for the kubelet end.
func upgradeBackend(t *testing.T, cp *framework.ControlPlane) (string, *string) {
	t.Helper()
	var sawUser string
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawUser = r.Header.Get("X-Remote-User")
		switch strings.ToLower(r.Header.Get("Upgrade")) {
		case "spdy/3.1":
			if _, err := streamhttp.Handshake(r, w, []string{echoProtocol}); err != nil {
				return
			}
			conn := streamspdy.NewResponseUpgrader().UpgradeResponse(w, r, func(s streamhttp.Stream, _ <-chan struct{}) error {
				go func() { _, _ = io.Copy(s, s); _ = s.Close() }()
				return nil
			})
			if conn != nil {
				<-conn.CloseChan()
			}
		case "websocket":
			c := wsstream.NewConn(map[string]wsstream.ChannelProtocolConfig{
				echoProtocol: {Binary: true, Channels: []wsstream.ChannelType{wsstream.ReadWriteChannel}},
			})
			_, chans, err := c.Open(w, r)
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.Copy(chans[0], chans[0])
		default:
			http.Error(w, "want an upgrade", http.StatusBadRequest)
		}
	})
	cert, key := cp.IssueServingCert(t, "upgrade-backend", "127.0.0.1")
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequestClientCert}}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + ln.Addr().String(), &sawUser
}

func upgradeScenario(t *testing.T, cp *framework.ControlPlane) {
	// Given a proxy in front-proxy mode before an upgrade-speaking backend,
	// and carol with a client certificate
	backend, sawUser := upgradeBackend(t, cp)
	rp := startProxy(t, cp, proxy.AuthFrontProxy, backend)
	certFile, keyFile := cp.IssueClientCert(t, "carol")
	carol := &rest.Config{Host: rp.URL, TLSClientConfig: rest.TLSClientConfig{CAFile: cp.CACertFile, CertFile: certFile, KeyFile: keyFile}}
	execPath := "/api/v1/namespaces/" + proxyNS + "/pods/p/exec?command=cat&stdin=true&stdout=true"

	t.Run("SPDY streams through the proxy", func(t *testing.T) {
		// When client-go's SPDY dialer upgrades an exec request through the proxy
		rt, upgrader, err := spdy.RoundTripperFor(carol)
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(rp.URL + execPath)
		conn, proto, err := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u).Dial(echoProtocol)
		if err != nil {
			t.Fatalf("failed to upgrade to SPDY through the proxy: %v", err)
		}
		defer conn.Close()
		if proto != echoProtocol {
			t.Errorf("negotiated %q, want %q", proto, echoProtocol)
		}
		// Then two streams each echo what is written on them
		for _, msg := range []string{"first stream", "second stream"} {
			s, err := conn.CreateStream(http.Header{"Streamtype": {"stdin"}})
			if err != nil {
				t.Fatalf("failed to open a stream: %v", err)
			}
			if _, err := s.Write([]byte(msg)); err != nil {
				t.Fatalf("failed to write: %v", err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(s, got); err != nil || string(got) != msg {
				t.Fatalf("read %q, %v; want %q", got, err, msg)
			}
			_ = s.Close()
		}
		if *sawUser != "carol" {
			t.Errorf("backend saw X-Remote-User %q, want carol", *sawUser)
		}
	})

	t.Run("a WebSocket stream through the proxy", func(t *testing.T) {
		// When a WebSocket client opens an exec channel stream through the proxy
		cfg, err := websocket.NewConfig(strings.Replace(rp.URL, "https://", "wss://", 1)+execPath, rp.URL)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Protocol = []string{echoProtocol}
		cfg.TlsConfig = clientTLS(t, cp.CACertFile, certFile, keyFile)
		ws, err := websocket.DialConfig(cfg)
		if err != nil {
			t.Fatalf("failed to open a WebSocket through the proxy: %v", err)
		}
		defer ws.Close()
		_ = ws.SetDeadline(time.Now().Add(10 * time.Second))
		// Then what is sent on channel 0 comes back on channel 0
		want := append([]byte{0}, "hello over websocket"...)
		if err := websocket.Message.Send(ws, want); err != nil {
			t.Fatalf("failed to send: %v", err)
		}
		for {
			var got []byte
			if err := websocket.Message.Receive(ws, &got); err != nil {
				t.Fatalf("failed to receive: %v", err)
			}
			if len(got) > 1 { // an empty frame per channel opens the stream
				if !bytes.Equal(got, want) {
					t.Fatalf("received %q, want %q", got, want)
				}
				break
			}
		}
		if *sawUser != "carol" {
			t.Errorf("backend saw X-Remote-User %q, want carol", *sawUser)
		}
	})
}
