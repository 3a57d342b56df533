package webhook

import (
	"slices"
	"strconv"
	"unicode/utf8"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// reviewHead opens every answer: the AdmissionReview's kind and apiVersion,
// in the order encoding/json writes them.
const reviewHead = `{"kind":"` + reviewKind + `","apiVersion":"` + reviewAPIVersion + `","response":{"uid":`

// appendResponse appends the AdmissionReview that carries resp to buf, byte
// for byte as encodeResponse (encoding/json without HTML escaping) writes
// it, without reflection. ok is false for a response holding a field the
// webhook never sets (a patch, a status with a kind or list metadata,
// details other than retryAfterSeconds); encodeResponse writes those.
func appendResponse(buf []byte, resp *admissionv1.AdmissionResponse) (out []byte, ok bool) {
	if len(resp.Patch) > 0 || resp.PatchType != nil {
		return buf, false
	}
	buf = append(buf, reviewHead...)
	buf = appendString(buf, string(resp.UID))
	if resp.Allowed {
		buf = append(buf, `,"allowed":true`...)
	} else {
		buf = append(buf, `,"allowed":false`...)
	}
	if st := resp.Result; st != nil {
		if st.Kind != "" || st.APIVersion != "" || st.ListMeta != (metav1.ListMeta{}) {
			return buf, false
		}
		buf = append(buf, `,"status":{"metadata":{}`...)
		if st.Status != "" {
			buf = append(buf, `,"status":`...)
			buf = appendString(buf, st.Status)
		}
		if st.Message != "" {
			buf = append(buf, `,"message":`...)
			buf = appendString(buf, st.Message)
		}
		if st.Reason != "" {
			buf = append(buf, `,"reason":`...)
			buf = appendString(buf, string(st.Reason))
		}
		if dt := st.Details; dt != nil {
			if dt.Name != "" || dt.Group != "" || dt.Kind != "" || dt.UID != "" || len(dt.Causes) > 0 {
				return buf, false
			}
			buf = append(buf, `,"details":{`...)
			if dt.RetryAfterSeconds != 0 {
				buf = append(buf, `"retryAfterSeconds":`...)
				buf = strconv.AppendInt(buf, int64(dt.RetryAfterSeconds), 10)
			}
			buf = append(buf, '}')
		}
		if st.Code != 0 {
			buf = append(buf, `,"code":`...)
			buf = strconv.AppendInt(buf, int64(st.Code), 10)
		}
		buf = append(buf, '}')
	}
	if len(resp.AuditAnnotations) > 0 {
		buf = append(buf, `,"auditAnnotations":{`...)
		// encoding/json writes a map's keys sorted; the webhook sets at most three.
		var arr [4]string
		keys := arr[:0]
		for k := range resp.AuditAnnotations {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendString(buf, k)
			buf = append(buf, ':')
			buf = appendString(buf, resp.AuditAnnotations[k])
		}
		buf = append(buf, '}')
	}
	if len(resp.Warnings) > 0 {
		buf = append(buf, `,"warnings":[`...)
		for i, w := range resp.Warnings {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendString(buf, w)
		}
		buf = append(buf, ']')
	}
	return append(buf, "}}"...), true
}

const hexDigits = "0123456789abcdef"

// appendString appends s quoted as encoding/json quotes it without HTML
// escaping: quote, backslash and control characters escaped, invalid UTF-8
// as U+FFFD, U+2028 and U+2029 escaped.
func appendString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch b {
			case '\\', '"':
				buf = append(buf, '\\', b)
			case '\b':
				buf = append(buf, '\\', 'b')
			case '\f':
				buf = append(buf, '\\', 'f')
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case c == utf8.RuneError && size == 1:
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
		case c == '\u2028' || c == '\u2029':
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}
