// Package serving owns what the listeners of kubedefender serve share: one
// Server type for the webhook, the proxy and the metrics endpoint (listen at
// construction, serve, graceful shutdown, errors reported the same way), and
// the certificate files they serve and verify with, read and reloaded through
// k8s.io/apiserver's dynamiccertificates.
//
// # Certificates
//
// A CertKey is a certificate and key pair on disk (the serving pair of
// --tls-cert-file, the proxy's front-proxy client pair); a CA is a CA bundle
// on disk (--webhook-client-ca-file). Each wraps a dynamiccertificates
// content object, which reads the files, checks them (the key matches the
// certificate; the bundle holds certificates) and keeps the last good
// content, and adds what kubedefender relies on:
//
//   - Run watches the files' directories (package filewatch: a Secret
//     volume's symlink swap and cert-manager's two writes are one debounced
//     event; a resync catches a missed one) and loads them through the
//     content object's RunOnce. The wrapped content objects' own Run is not
//     used: it reports a refused file only to klog and retries it with
//     backoff, while CertKey and CA count every reload by result
//     (kubedefender_webhook_certificate_reloads_total,
//     kubedefender_webhook_client_ca_reloads_total) and log it once.
//     The proxy's client CA (--client-ca-file) is not a CA of this package:
//     proxy's buildAuthenticator builds a bare
//     dynamiccertificates.DynamicFileCAContent and proxy.Proxy.Run runs that
//     object's own Run, so its reloads are reported the way that Run
//     reports them (klog) and are not counted.
//   - A bad edit is refused and the running pair or bundle stays; the files
//     are read again on their next change or at the resync.
//   - The parsed pair is kept for handshakes (GetCertificate,
//     GetClientCertificate) and for the expiry gauge (Leaf).
//
// Each content object keeps one idle goroutine (its work queue's) for the
// life of the process, since only its own Run would shut the queue down;
// a process builds a handful of them.
//
// One process builds one CertKey per pair of files and hands it to every
// listener that serves it: the webhook and the proxy share the serving pair
// of --tls-cert-file, and its files are watched once.
package serving
