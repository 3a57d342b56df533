package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"

	metainternalversionscheme "k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/endpoints/handlers/negotiation"
)

// MaxDeleteOptionsBytes bounds how much of a DELETE's body the proxy reads
// to learn its options. A longer body is forwarded whole (what was read,
// then the rest streamed) and the delete is judged as a real one.
const MaxDeleteOptionsBytes = 1 << 20

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
// then whatever was not. At most MaxDeleteOptionsBytes+1 bytes are held.
func readDeleteOptions(r *http.Request) deleteOptions {
	body, err := peekBody(r, MaxDeleteOptionsBytes)
	switch {
	case err != nil:
		// Too large or unreadable: judged as a real delete.
		return deleteOptions{unknown: true}
	case len(body) > 0:
		return decodeDeleteOptionsBody(headerValue(r.Header, "Content-Type"), body)
	}
	opts := &metav1.DeleteOptions{}
	if r.URL.RawQuery != "" {
		if err := metainternalversionscheme.ParameterCodec.DecodeParameters(r.URL.Query(), metav1.SchemeGroupVersion, opts); err != nil {
			// The API server answers 400; nothing is deleted, but judging
			// it as real is the safe side.
			return deleteOptions{unknown: true}
		}
	}
	return optionsOf(opts)
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

// peekBody reads up to limit bytes of r's body and puts them back in front
// of the rest, so whoever reads r.Body next gets every byte. It returns
// errBodyTooLarge when the body is longer than limit (the bytes are still
// put back), or the read error.
func peekBody(r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, nil
	}
	orig := r.Body
	var buf []byte
	if n := r.ContentLength; n > 0 && n <= limit {
		buf = make([]byte, 0, n+1)
	}
	b := bytes.NewBuffer(buf)
	_, err := b.ReadFrom(io.LimitReader(orig, limit+1))
	read := b.Bytes()
	r.Body = &replayBody{Reader: io.MultiReader(bytes.NewReader(read), orig), orig: orig}
	if err != nil {
		return nil, err
	}
	if int64(len(read)) > limit {
		return nil, errBodyTooLarge
	}
	return read, nil
}

// replayBody yields the bytes read ahead, then the rest of the original
// body, and closes the original.
type replayBody struct {
	io.Reader
	orig io.ReadCloser
}

func (b *replayBody) Close() error { return b.orig.Close() }
