package webhook

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/kubedefender/kubedefender/internal/jsonscan"
)

// decodeReference is decodeReview as it was before the scanner: encoding/json
// into review, then the same checks.
func decodeReference(body []byte) (*request, error) {
	var rv review
	if err := json.Unmarshal(body, &rv); err != nil {
		return nil, &decodeError{msg: "failed to decode AdmissionReview: " + describeJSONError(body, err)}
	}
	return checkReview(&rv)
}

// checkParity fails t unless decodeReview decodes body to what encoding/json
// decodes (the same fields, or the same error in the same words), and unless
// a body the scanner accepts is one encoding/json accepts into the same
// review.
func checkParity(t *testing.T, body []byte) (scanned bool) {
	t.Helper()
	var want review
	wantErr := json.Unmarshal(body, &want)
	var got review
	scanErr := scanReview(body, &got)
	if scanErr == nil {
		if wantErr != nil {
			t.Fatalf("the scanner accepts what encoding/json refuses (%v): %q", wantErr, body)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("the scanner decodes\n%#v\nencoding/json decodes\n%#v\nfrom %q", got, want, body)
		}
	} else if !errors.Is(scanErr, jsonscan.ErrSlowPath) && !errors.Is(scanErr, jsonscan.ErrSyntax) {
		t.Fatalf("the scanner fails with %v, neither a syntax error nor a decline", scanErr)
	}
	gotReq, gotErr := decodeReview(body)
	wantReq, wantDecErr := decodeReference(body)
	if (gotErr == nil) != (wantDecErr == nil) || gotErr != nil && gotErr.Error() != wantDecErr.Error() {
		t.Fatalf("decodeReview: error %v, encoding/json: %v, for %q", gotErr, wantDecErr, body)
	}
	if !reflect.DeepEqual(gotReq, wantReq) {
		t.Fatalf("decodeReview decodes\n%#v\nencoding/json decodes\n%#v\nfrom %q", gotReq, wantReq, body)
	}
	return scanErr == nil
}

// FuzzDecodeReviewParity holds the scanner to encoding/json: on any body,
// decodeReview decodes the same request or refuses with the same error as
// encoding/json into review did, and the scanner never accepts a body
// encoding/json refuses. Run:
// go test ./webhook -run '^$' -fuzz FuzzDecodeReviewParity -fuzztime 60s
func FuzzDecodeReviewParity(f *testing.F) {
	addGoldenRequests(f)
	for _, tc := range hostileReviews {
		f.Add([]byte(tc.body))
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkParity(t, body) })
}

const okReview = `{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u1","operation":"DELETE","name":"p","namespace":"ns","resource":{"group":"","version":"v1","resource":"pods"},%s}}`

func withReq(extra string) string { return strings.Replace(okReview, "%s", extra, 1) }

var hostileReviews = []struct {
	name string
	body string
	// scanned: the scanner decodes it itself (otherwise encoding/json does).
	scanned bool
}{
	{name: "a repeated key takes the last value", body: withReq(`"name":"q","name":"r"`), scanned: true},
	{name: "a repeated object merges into the earlier one", body: withReq(`"resource":{"group":"apps"},"resource":{"resource":"deployments"}`), scanned: true},
	{name: "a null string leaves the earlier value", body: withReq(`"name":null`), scanned: true},
	{name: "a null request after a request leaves none", body: `{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u","operation":"DELETE"},"request":null}`, scanned: true},
	{name: "a repeated request merges", body: `{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u"},"request":{"operation":"DELETE"}}`, scanned: true},
	{name: "a null dryRun after true is unset", body: withReq(`"dryRun":true,"dryRun":null`), scanned: true},
	{name: "an empty groups array is empty, not nil", body: withReq(`"userInfo":{"username":"a","groups":[]}`), scanned: true},
	{name: "null groups are nil", body: withReq(`"userInfo":{"username":"a","groups":["x"],"groups":null}`), scanned: true},
	{name: "a key in another case matches its field, as encoding/json matches it", body: withReq(`"NAME":"upper"`)},
	{name: "a key with the Kelvin sign matches kind", body: "{\"\u212aind\":\"AdmissionReview\",\"apiVersion\":\"admission.k8s.io/v1\",\"request\":{\"uid\":\"u\",\"operation\":\"DELETE\"}}"},
	{name: "an escaped key matches its field", body: withReq(`"n\u0061me":"esc"`)},
	{name: "a value with unicode escapes is unescaped", body: withReq(`"name":"\u0070od\ud83d\ude00"`)},
	{name: "a lone surrogate becomes the replacement character", body: withReq(`"name":"\ud800"`)},
	{name: "invalid UTF-8 in a value is replaced", body: withReq("\"name\":\"p\xff\"")},
	{name: "invalid UTF-8 in a skipped value is accepted", body: withReq("\"requestKind\":{\"kind\":\"\xff\"}"), scanned: true},
	{name: "huge numbers in the old object are skipped", body: withReq(`"oldObject":{"metadata":{"uid":"o","generation":1e999999,"x":-123456789012345678901234567890.5e-7}}`), scanned: true},
	{name: "escapes in the old object are skipped", body: withReq(`"oldObject":{"metadata":{"uid":"o","annotations":{"a":"{\"b\":\"\\u003c\\/\"}\t"}}}`), scanned: true},
	{name: "an options object is kept raw", body: withReq(`"options":{"kind":"DeleteOptions","propagationPolicy":"Orphan"}`), scanned: true},
	{name: "null options are kept as null", body: withReq(`"options":null`), scanned: true},
	{name: "a deeply nested skipped value is validated", body: withReq(`"x":` + strings.Repeat("[", 500) + strings.Repeat("]", 500)), scanned: true},
	{name: "nesting past encoding/json's limit is refused", body: withReq(`"x":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001))},
	{name: "an unclosed array deep in a skipped value is refused", body: withReq(`"x":` + strings.Repeat("[", 20) + strings.Repeat("]", 19))},
	{name: "a truncated body is refused", body: withReq(`"oldObject":{"metadata":{"uid":"o"}}`)[:60]},
	{name: "an empty body is refused", body: ``},
	{name: "data after the review is refused", body: withReq(`"a":1`) + ` {}`},
	{name: "a control character in a skipped string is refused", body: withReq("\"x\":\"a\x01b\"")},
	{name: "a bad escape in a skipped string is refused", body: withReq(`"x":"\q"`)},
	{name: "a short unicode escape is refused", body: withReq(`"x":"\u12"`)},
	{name: "a number with a leading zero is refused", body: withReq(`"x":012`)},
	{name: "a number without digits after the point is refused", body: withReq(`"x":1.`)},
	{name: "a misspelt literal is refused", body: withReq(`"x":nul`)},
	{name: "a trailing comma is refused", body: withReq(`"x":[1,]`)},
	{name: "a missing value is refused", body: withReq(`"x":`)},
	{name: "a number as the uid is refused", body: withReq(`"uid":7`)},
	{name: "a string as dryRun is refused", body: withReq(`"dryRun":"true"`)},
	{name: "a number among the groups is refused", body: withReq(`"userInfo":{"groups":["a",1]}`)},
	{name: "a null among the groups decodes as encoding/json does", body: withReq(`"userInfo":{"groups":["a",null]}`)},
	{name: "a string as the old object is refused", body: withReq(`"oldObject":"x"`)},
	{name: "an array as the request is refused", body: `{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":[]}`},
	{name: "a review that is null is refused", body: `null`},
	{name: "a review that is an array is refused", body: `[]`},
	{name: "a review of another version is refused", body: `{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"u","operation":"DELETE"}}`, scanned: true},
	{name: "any object is handed whole to the eviction reader", body: withReq(`"object":{"kind":"Eviction","apiVersion":"policy/v1","deleteOptions":{"dryRun":["All"],"preconditions":{"uid":"p"}}}`), scanned: true},
	{name: "a scalar object is handed to the eviction reader", body: withReq(`"object":7`), scanned: true},
	{name: "an old object's spec with replicas is read", body: withReq(`"oldObject":{"spec":{"replicas":3}}`), scanned: true},
}

// Hostile bodies decode as encoding/json decodes them (or are refused with
// its words), and the shapes the API server sends take the scanner.
func TestDecodeReviewMatchesEncodingJSON(t *testing.T) {
	for _, tc := range hostileReviews {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkParity(t, []byte(tc.body)); got != tc.scanned {
				t.Errorf("decoded by the scanner: %v, want %v", got, tc.scanned)
			}
		})
	}
}

// Every golden request (the API server's shapes) is decoded by the scanner,
// not handed to encoding/json.
func TestGoldenRequestsTakeTheScanner(t *testing.T) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "golden", "*.request.json"))
	if err != nil || len(seeds) == 0 {
		t.Fatalf("no golden requests: %v", err)
	}
	for _, s := range seeds {
		t.Run(filepath.Base(s), func(t *testing.T) {
			b, err := os.ReadFile(s)
			if err != nil {
				t.Fatal(err)
			}
			if !checkParity(t, b) {
				t.Error("the scanner declined it")
			}
		})
	}
}
