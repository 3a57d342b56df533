package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	metainternalversionscheme "k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/endpoints/handlers/negotiation"
)

// MaxDeleteOptionsBytes bounds how much of a DELETE's body (or an
// eviction's, which carries DeleteOptions too) the proxy reads to learn its
// options, before the limits and the priority levels. Real DeleteOptions and
// Evictions are a few hundred bytes. A body declared or found longer is
// forwarded whole (what was read, then the rest streamed) and the request is
// judged as a real delete or eviction.
const MaxDeleteOptionsBytes = 64 << 10

// DefaultBodyReadTimeout is how long the proxy waits by default for the
// options body of a DELETE or an eviction (Config.BodyReadTimeout) before it
// answers 408 itself.
const DefaultBodyReadTimeout = 10 * time.Second

// deleteOptions are what the API server will do with a delete or
// deletecollection, as far as the limits care.
type deleteOptions struct {
	// dryRun: the API server will only pretend (DeleteOptions.dryRun is set).
	dryRun bool
	// propagation is the cascade the client asked for (propagationPolicy, or
	// orphanDependents mapped to Orphan or Background); "" leaves it to the
	// resource's default.
	propagation metav1.DeletionPropagation
	// unknown: the options could not be read (body too large, unreadable or
	// undecodable); dryRun is then false, so the delete is judged as real.
	unknown bool
}

// readDeleteOptions reads a DELETE's options exactly where the API server
// will (k8s.io/apiserver endpoints/handlers.DeleteResource and
// DeleteCollection): from the body when the body is not empty, decoded with
// the meta codecs by its Content-Type (JSON, YAML or protobuf; the query is
// then ignored), and from the query parameters only when the body is empty.
// So `?dryRun=All` with a body `{}` is a real delete, and `dryRun: [All]` in
// the body alone is a dry run.
//
// r.Body is replaced by a reader that yields the same bytes: what was read,
// then whatever was not (see peekBody for what is held). The error is the
// body's read error (the client stopped sending, or a read deadline
// passed): the request cannot be forwarded whole and should be refused.
func readDeleteOptions(r *http.Request) (deleteOptions, error) {
	body, err := peekBody(r, MaxDeleteOptionsBytes)
	switch {
	case errors.Is(err, errBodyTooLarge):
		// Too large: judged as a real delete.
		return deleteOptions{unknown: true}, nil
	case err != nil:
		return deleteOptions{unknown: true}, fmt.Errorf("failed to read the request body: %w", err)
	case len(body) > 0:
		return decodeDeleteOptionsBody(headerValue(r.Header, "Content-Type"), body), nil
	}
	opts, ok := queryDeleteOptions(r.URL)
	if !ok {
		// The API server answers 400; nothing is deleted, but judging it as
		// real is the safe side (the request is still forwarded).
		return deleteOptions{unknown: true}, nil
	}
	return optionsOf(opts), nil
}

// queryDeleteOptions decodes DeleteOptions from the query as the API server
// does; ok is false where it would answer 400.
func queryDeleteOptions(u *url.URL) (opts *metav1.DeleteOptions, ok bool) {
	opts = &metav1.DeleteOptions{}
	if u.RawQuery == "" {
		return opts, true
	}
	return opts, metainternalversionscheme.ParameterCodec.DecodeParameters(u.Query(), metav1.SchemeGroupVersion, opts) == nil
}

// deleteOptionsKind is the default kind a body decodes as, as the API server
// gives it (a body may also say kind DeleteOptions of any group version).
var deleteOptionsKind = metav1.SchemeGroupVersion.WithKind("DeleteOptions")

func decodeDeleteOptionsBody(contentType string, body []byte) deleteOptions {
	codecs := metainternalversionscheme.Codecs
	s, err := negotiation.NegotiateInputSerializerForMediaType(contentType, false, codecs)
	if err != nil {
		return deleteOptions{unknown: true}
	}
	opts := &metav1.DeleteOptions{}
	gvk := deleteOptionsKind
	obj, _, err := codecs.DecoderToVersion(s.Serializer, gvk.GroupVersion()).Decode(body, &gvk, opts)
	if err != nil || obj != runtime.Object(opts) {
		return deleteOptions{unknown: true}
	}
	return optionsOf(opts)
}

func optionsOf(o *metav1.DeleteOptions) deleteOptions {
	// dryrun.IsDryRun: any value is a dry run (validation admits only All).
	d := deleteOptions{dryRun: len(o.DryRun) > 0}
	orphan := o.OrphanDependents //nolint:staticcheck // deprecated, but the API server still honours it
	switch {
	case o.PropagationPolicy != nil:
		d.propagation = *o.PropagationPolicy
	case orphan != nil && *orphan:
		d.propagation = metav1.DeletePropagationOrphan
	case orphan != nil:
		d.propagation = metav1.DeletePropagationBackground
	}
	return d
}

var errBodyTooLarge = errors.New("body larger than the options cap")

// peekStart is the buffer a peek starts with. It doubles as bytes arrive,
// up to the peek's limit: a body that is declared but never sent costs
// these bytes and no more, whatever its Content-Length says.
const peekStart = 512

// peekBody reads up to limit bytes of r's body and puts them back in front
// of the rest, so whoever reads r.Body next gets every byte. It returns
// errBodyTooLarge when the body is longer than limit (the bytes read are
// still put back), or the read error.
//
// A body that declares more than limit bytes is not read at all. Otherwise
// the buffer grows with what arrives, never from the declared length: it
// holds at most twice the bytes received (or peekStart) and never more
// than limit+1. The caller bounds the wait (a read deadline).
func peekBody(r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, nil
	}
	if r.ContentLength > limit {
		return nil, errBodyTooLarge
	}
	orig := r.Body
	buf := make([]byte, 0, min(peekStart, limit+1))
	var err error
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > limit {
				break
			}
			grown := make([]byte, len(buf), min(2*int64(cap(buf)), limit+1))
			copy(grown, buf)
			buf = grown
		}
		var n int
		n, err = orig.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			break
		}
	}
	r.Body = &replayBody{Reader: io.MultiReader(bytes.NewReader(buf), orig), orig: orig}
	if err != nil && err != io.EOF {
		return nil, err
	}
	if int64(len(buf)) > limit {
		return nil, errBodyTooLarge
	}
	return buf, nil
}

// replayBody yields the bytes read ahead, then the rest of the original
// body, and closes the original.
type replayBody struct {
	io.Reader
	orig io.ReadCloser
}

func (b *replayBody) Close() error { return b.orig.Close() }
