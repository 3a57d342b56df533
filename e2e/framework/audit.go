package framework

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"testing"
)

// auditPolicy records every request except reads at level Metadata: who did
// what to which object, without bodies.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  verbs: [get, list, watch]
- level: Metadata
`

// AuditEvent is the part of an audit.k8s.io/v1 Event that tests look at.
type AuditEvent struct {
	Verb       string `json:"verb"`
	Stage      string `json:"stage"`
	RequestURI string `json:"requestURI"`
	User       struct {
		Username string   `json:"username"`
		Groups   []string `json:"groups"`
	} `json:"user"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
		APIGroup    string `json:"apiGroup"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// ReadAuditEvents parses the audit log written so far (Options.AuditLog must
// be set).
func (cp *ControlPlane) ReadAuditEvents(t testing.TB) []AuditEvent {
	t.Helper()
	if cp.AuditLogFile == "" {
		t.Fatalf("failed to read audit events: start the control plane with Options.AuditLog")
	}
	b, err := os.ReadFile(cp.AuditLogFile)
	if err != nil {
		t.Fatalf("failed to read the audit log: %v", err)
	}
	var events []AuditEvent
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		var e AuditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("failed to parse audit line %q: %v", sc.Text(), err)
		}
		events = append(events, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("failed to scan the audit log: %v", err)
	}
	return events
}
