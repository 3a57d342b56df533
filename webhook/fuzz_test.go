package webhook

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/kubedefender/kubedefender/policy"
)

// FuzzDecodeAdmissionReview feeds arbitrary bodies to the decoder: it must
// never panic, every failure must be a *decodeError with a message, and a
// success must carry what the handler relies on. Seeds are the golden
// requests. Run: go test ./webhook -run '^$' -fuzz FuzzDecodeAdmissionReview -fuzztime 30s
func FuzzDecodeAdmissionReview(f *testing.F) {
	addGoldenRequests(f)
	f.Add([]byte(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"x","operation":"DELETE"}}`))
	f.Add([]byte(`{"request":{"oldObject":{"metadata":{"uid":7}}}}`))
	f.Add([]byte(``))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeReview(body)
		if err != nil {
			var de *decodeError
			if !errors.As(err, &de) || de.msg == "" {
				t.Fatalf("error %v (%T) is not a decodeError with a message", err, err)
			}
			return
		}
		if req == nil || req.UID == "" || req.Operation == "" {
			t.Fatalf("decoded %+v without a uid or an operation", req)
		}
		// Whatever decoded must map and encode without panicking.
		if a, ok := toAttributes(req); ok {
			_ = policy.Exemption(&a.Attributes, "kubedefender-system")
		}
	})
}

// addGoldenRequests seeds f with the golden AdmissionReview requests.
func addGoldenRequests(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "golden", "*.request.json"))
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}
