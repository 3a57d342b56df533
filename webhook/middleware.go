package webhook

import (
	"errors"
	"fmt"
	"mime"
	"net/http"
)

// rejectFunc is told about a request a filter refused, with the status and
// message sent back.
type rejectFunc func(r *http.Request, code int, msg string)

// withRecovery turns a panic in next into a 500 (when nothing was written
// yet) instead of a dropped connection, and reports it. Panics inside the
// judging of a decoded review are recovered there, into a response that
// carries the request's UID; this is the last resort.
func withRecovery(report func(r *http.Request, p any), next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if err, ok := p.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(p)
				}
				report(r, p)
				http.Error(w, "kubedefender: internal error while serving the admission request (logged)", http.StatusInternalServerError)
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// withContentType refuses a body that is not application/json with 415: the
// API server always sends JSON AdmissionReviews.
func withContentType(reject rejectFunc, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ct := r.Header.Get("Content-Type")
		if ct == "application/json" {
			// What the API server sends, without a parameter to parse.
			next.ServeHTTP(w, r)
			return
		}
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			msg := fmt.Sprintf("failed to accept AdmissionReview: Content-Type %q, want application/json", ct)
			reject(r, http.StatusUnsupportedMediaType, msg)
			http.Error(w, msg, http.StatusUnsupportedMediaType)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// withBodyLimit refuses a declared Content-Length over max with 413 before
// reading anything, and caps what next can read to max bytes (reading past it
// fails with *http.MaxBytesError). max <= 0 disables the filter.
func withBodyLimit(max int64, reject rejectFunc, next http.Handler) http.Handler {
	if max <= 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > max {
			msg := fmt.Sprintf("failed to accept AdmissionReview: the body of %d bytes exceeds the cap of %d bytes", r.ContentLength, max)
			reject(r, http.StatusRequestEntityTooLarge, msg)
			http.Error(w, msg, http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, max)
		next.ServeHTTP(w, r)
	})
}
