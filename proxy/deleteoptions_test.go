package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	metainternalversionscheme "k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/endpoints/handlers/negotiation"
)

func protobufDeleteOptions(t *testing.T, o *metav1.DeleteOptions) string {
	t.Helper()
	s, err := negotiation.NegotiateInputSerializerForMediaType(runtime.ContentTypeProtobuf, false, metainternalversionscheme.Codecs)
	if err != nil {
		t.Fatal(err)
	}
	b, err := runtime.Encode(metainternalversionscheme.Codecs.EncoderForVersion(s.Serializer, metav1.SchemeGroupVersion), o)
	if err != nil {
		t.Fatalf("failed to encode: %v", err)
	}
	return string(b)
}

// TestDeleteOptionsAreReadWhereTheAPIServerReadsThem mirrors
// k8s.io/apiserver's DeleteResource: a non-empty body is decoded (by its
// Content-Type) and the query ignored; an empty body leaves the query.
func TestDeleteOptionsAreReadWhereTheAPIServerReadsThem(t *testing.T) {
	foreground := metav1.DeletePropagationForeground
	for _, tc := range []struct {
		name        string
		query       string
		contentType string
		body        string
		chunked     bool
		want        deleteOptions
	}{
		{name: "no body and no query is a real delete"},
		{name: "dryRun=All in the query with no body is a dry run", query: "dryRun=All", want: deleteOptions{dryRun: true}},
		{name: "dryRun=All in the query with a body {} is a real delete", query: "dryRun=All", contentType: "application/json", body: `{}`},
		{name: "dryRun in the body alone is a dry run", contentType: "application/json", body: `{"dryRun":["All"]}`, want: deleteOptions{dryRun: true}},
		{name: "a body without a content type is read as JSON", body: `{"dryRun":["All"]}`, want: deleteOptions{dryRun: true}},
		{name: "a chunked body is read too", body: `{"dryRun":["All"]}`, chunked: true, want: deleteOptions{dryRun: true}},
		{name: "a DeleteOptions of another group version is accepted", contentType: "application/json",
			body: `{"kind":"DeleteOptions","apiVersion":"apps/v1","dryRun":["All"],"propagationPolicy":"Foreground"}`,
			want: deleteOptions{dryRun: true, propagation: metav1.DeletePropagationForeground}},
		{name: "a YAML body", contentType: "application/yaml", body: "propagationPolicy: Orphan\n", want: deleteOptions{propagation: metav1.DeletePropagationOrphan}},
		{name: "a protobuf body", contentType: runtime.ContentTypeProtobuf,
			body: protobufDeleteOptions(t, &metav1.DeleteOptions{DryRun: []string{"All"}, PropagationPolicy: &foreground}),
			want: deleteOptions{dryRun: true, propagation: metav1.DeletePropagationForeground}},
		{name: "propagationPolicy in the query with no body", query: "propagationPolicy=Background", want: deleteOptions{propagation: metav1.DeletePropagationBackground}},
		{name: "propagationPolicy in the query is ignored when there is a body", query: "propagationPolicy=Orphan", body: `{}`},
		{name: "orphanDependents=true is Orphan", body: `{"orphanDependents":true}`, want: deleteOptions{propagation: metav1.DeletePropagationOrphan}},
		{name: "orphanDependents=false is Background", query: "orphanDependents=false", want: deleteOptions{propagation: metav1.DeletePropagationBackground}},
		{name: "an undecodable body is unknown and real", body: `{"dryRun":`, want: deleteOptions{unknown: true}},
		{name: "a body of another kind is unknown and real", body: `{"kind":"Pod","apiVersion":"v1","dryRun":["All"]}`, want: deleteOptions{unknown: true}},
		{name: "an unsupported content type is unknown and real", contentType: "text/plain", body: `{"dryRun":["All"]}`, want: deleteOptions{unknown: true}},
		{name: "a body over the cap is unknown and real", body: `{"dryRun":["All"],"x":"` + strings.Repeat("a", MaxDeleteOptionsBytes) + `"}`, want: deleteOptions{unknown: true}},
		{name: "a chunked body over the cap is unknown and real", chunked: true, body: `{"dryRun":["All"],"x":"` + strings.Repeat("a", MaxDeleteOptionsBytes) + `"}`, want: deleteOptions{unknown: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodDelete, "/api/v1/namespaces/default/pods/p?"+tc.query, strings.NewReader(tc.body))
			if tc.body == "" {
				r.Body, r.ContentLength = http.NoBody, 0
			}
			if tc.chunked {
				r.ContentLength = -1
				r.Body = io.NopCloser(strings.NewReader(tc.body)) // no length known
			}
			if tc.contentType != "" {
				r.Header.Set("Content-Type", tc.contentType)
			}
			if got, err := readDeleteOptions(r); got != tc.want || err != nil {
				t.Errorf("options = %+v, %v; want %+v", got, err, tc.want)
			}
			rest, err := io.ReadAll(r.Body)
			if err != nil || !bytes.Equal(rest, []byte(tc.body)) {
				t.Errorf("the body left for the upstream is %d bytes (%v), want the %d sent", len(rest), err, len(tc.body))
			}
		})
	}
}

// FuzzDeleteOptions: any body is either read or judged as a real delete,
// never a panic, and always passed on whole.
func FuzzDeleteOptions(f *testing.F) {
	for _, s := range []string{`{}`, `{"dryRun":["All"]}`, "dryRun: [All]\n", `{"kind":"DeleteOptions","apiVersion":"v1"}`, "\x6b\x38\x73\x00"} {
		f.Add("application/json", s)
	}
	f.Add(runtime.ContentTypeProtobuf, "k8s\x00\n\x02")
	f.Fuzz(func(t *testing.T, contentType, body string) {
		r := httptest.NewRequest(http.MethodDelete, "/api/v1/namespaces/default/pods/p?dryRun=All", strings.NewReader(body))
		r.Header.Set("Content-Type", contentType)
		got, err := readDeleteOptions(r)
		if err != nil {
			t.Errorf("a body in memory failed to read: %v", err)
		}
		if got.unknown && got.dryRun {
			t.Errorf("unknown options judged as a dry run: %+v", got)
		}
		if rest, _ := io.ReadAll(r.Body); string(rest) != body {
			t.Errorf("the body changed on the way")
		}
	})
}
