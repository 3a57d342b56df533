package proxy

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// status is a Kubernetes metav1.Status, the body every API error has, so that
// kubectl and client-go print the message and honour Retry-After.
type status struct {
	Kind       string         `json:"kind"`
	APIVersion string         `json:"apiVersion"`
	Metadata   struct{}       `json:"metadata"`
	Status     string         `json:"status"`
	Message    string         `json:"message"`
	Reason     string         `json:"reason,omitempty"`
	Details    *statusDetails `json:"details,omitempty"`
	Code       int            `json:"code"`
}

type statusDetails struct {
	RetryAfterSeconds int `json:"retryAfterSeconds,omitempty"`
}

// writeStatus answers with a Failure Status; retryAfter > 0 also sets the
// Retry-After header (whole seconds, at least 1).
func writeStatus(w http.ResponseWriter, code int, reason, message string, retryAfter time.Duration) {
	s := status{Kind: "Status", APIVersion: "v1", Status: "Failure", Message: message, Reason: reason, Code: code}
	if retryAfter > 0 {
		secs := int((retryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		s.Details = &statusDetails{RetryAfterSeconds: secs}
	}
	body, _ := json.Marshal(&s)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
