package webhook

import (
	"bytes"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// checkEncodeParity fails t unless appendResponse writes resp byte for byte
// as encodeResponse (encoding/json) does, or declines it.
func checkEncodeParity(t *testing.T, resp *admissionv1.AdmissionResponse) (written bool) {
	t.Helper()
	want, err := encodeResponse(resp)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := appendResponse(nil, resp)
	if ok && !bytes.Equal(got, want) {
		t.Fatalf("appendResponse writes\n%s\nencoding/json writes\n%s", got, want)
	}
	return ok
}

// FuzzEncodeResponseParity holds appendResponse to encoding/json on every
// field the webhook sets, with arbitrary strings. Run:
// go test ./webhook -run '^$' -fuzz FuzzEncodeResponseParity -fuzztime 30s
func FuzzEncodeResponseParity(f *testing.F) {
	f.Add("uid", true, "Failure", "msg \"<ticket>: <why>\" & more", "Forbidden", int32(403), int32(0), "rule", "key", "warning", uint8(0))
	f.Add("u\u2028", false, "", "\x00\x1f\b\f\n\r\t\\ é \xff", "", int32(0), int32(300), "", "", "", uint8(7))
	f.Fuzz(func(t *testing.T, uid string, allowed bool, status, message, reason string, code, retry int32, rule, key, warning string, shape uint8) {
		resp := &admissionv1.AdmissionResponse{UID: types.UID(uid), Allowed: allowed}
		if shape&1 != 0 {
			resp.Result = &metav1.Status{Status: status, Message: message, Reason: metav1.StatusReason(reason), Code: code}
			if shape&2 != 0 {
				resp.Result.Details = &metav1.StatusDetails{RetryAfterSeconds: retry}
			}
		}
		if shape&4 != 0 {
			resp.AuditAnnotations = map[string]string{"rule": rule, "decision": "denied", key: warning}
		}
		if shape&8 != 0 {
			resp.Warnings = []string{warning, message}
		}
		if shape&16 != 0 {
			resp.Warnings = []string{}
		}
		if !checkEncodeParity(t, resp) {
			t.Fatalf("appendResponse declined %+v, a shape the webhook sends", resp)
		}
	})
}

func TestAppendResponseMatchesEncodingJSON(t *testing.T) {
	pt := admissionv1.PatchTypeJSONPatch
	cases := []struct {
		name    string
		resp    *admissionv1.AdmissionResponse
		written bool
	}{
		{name: "an allowed answer", resp: &admissionv1.AdmissionResponse{UID: "u", Allowed: true}, written: true},
		{name: "an allowed answer with an empty uid", resp: &admissionv1.AdmissionResponse{Allowed: true}, written: true},
		{name: "a denial with retry-after and audit annotations", written: true, resp: &admissionv1.AdmissionResponse{UID: "u", Result: &metav1.Status{
			Status: metav1.StatusFailure, Code: 429, Reason: metav1.StatusReasonTooManyRequests, Message: `budget "x" <ticket> & why`,
			Details: &metav1.StatusDetails{RetryAfterSeconds: 300}}, AuditAnnotations: map[string]string{"rule": "r", "decision": "denied", "key": "namespace=prod"}}},
		{name: "a denial with empty details", written: true, resp: &admissionv1.AdmissionResponse{UID: "u", Result: &metav1.Status{Details: &metav1.StatusDetails{}}}},
		{name: "an empty status", written: true, resp: &admissionv1.AdmissionResponse{UID: "u", Result: &metav1.Status{}}},
		{name: "a shadow answer with warnings", written: true, resp: &admissionv1.AdmissionResponse{UID: "u", Allowed: true, Warnings: []string{"a\nb", "\u2029"}, AuditAnnotations: map[string]string{"shadow": "would-deny"}}},
		{name: "control characters, invalid UTF-8 and line separators are escaped", written: true, resp: &admissionv1.AdmissionResponse{UID: "\x00\x01\x7f\xff\xfe é \u2028 \\\"", Allowed: true}},
		{name: "a patch is left to encoding/json", resp: &admissionv1.AdmissionResponse{UID: "u", Patch: []byte("[]"), PatchType: &pt}},
		{name: "a status with a kind is left to encoding/json", resp: &admissionv1.AdmissionResponse{UID: "u", Result: &metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status"}}}},
		{name: "a status with causes is left to encoding/json", resp: &admissionv1.AdmissionResponse{UID: "u", Result: &metav1.Status{Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{Message: "m"}}}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkEncodeParity(t, tc.resp); got != tc.written {
				t.Errorf("written by appendResponse: %v, want %v", got, tc.written)
			}
		})
	}
}
