package replay

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"container/heap"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// event is the part of an audit.k8s.io/v1 Event that replay reads. Decoding
// into this small struct instead of k8s.io/apiserver's audit.Event skips the
// request and response objects (except a deletecollection's response, see
// responseItems); decodeEvent fills it (BenchmarkDecode compares).
type event struct {
	Kind      string          `json:"kind"`
	AuditID   string          `json:"auditID"`
	Stage     string          `json:"stage"`
	Verb      string          `json:"verb"`
	URI       string          `json:"requestURI"`
	User      userInfo        `json:"user"`
	Impersona *userInfo       `json:"impersonatedUser"`
	UserAgent string          `json:"userAgent"`
	ObjectRef *objectRef      `json:"objectRef"`
	Status    *status         `json:"responseStatus"`
	Response  json.RawMessage `json:"responseObject"`
	Received  time.Time       `json:"requestReceivedTimestamp"`
	StageTime time.Time       `json:"stageTimestamp"`
	// Annotations keeps only the authorization decision.
	Annotations struct {
		Decision string `json:"authorization.k8s.io/decision"`
	} `json:"annotations"`
	// Items holds the events of an EventList (the webhook backend's batches).
	Items []json.RawMessage `json:"items"`
}

type status struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// annotationDecision is the audit annotation where the API server records
// its authorization decision ("allow" or "forbid").
const annotationDecision = "authorization.k8s.io/decision"

type userInfo struct {
	Username string   `json:"username"`
	Groups   []string `json:"groups"`
}

type objectRef struct {
	Resource    string `json:"resource"`
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
	APIGroup    string `json:"apiGroup"`
	Subresource string `json:"subresource"`
}

// Audit stages.
const (
	stageRequestReceived  = "RequestReceived"
	stageResponseComplete = "ResponseComplete"
	stagePanic            = "Panic"
)

// maxLine bounds one line of an audit log; a longer line (a huge response
// body) is reported and skipped.
const maxLine = 16 << 20

// Problem is an input line replay skipped.
type Problem struct {
	File string `json:"file"`
	Line int    `json:"line"`
	Err  string `json:"error"`
}

func (p Problem) String() string { return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Err) }

// source reads the events of one input, in file order.
type source struct {
	name   string
	r      *bufio.Reader
	closer io.Closer
	line   int
	buf    []byte
	// pending are the items of an EventList not handed out yet.
	pending []json.RawMessage
	pline   int
	// next is the event peeked for the merge; ok says whether there is one.
	next     *event
	nextLine int
	report   func(Problem)
	intern   interner
}

// openSource opens a file ("-" is stdin), gunzipping a .gz file (or any
// file that starts with the gzip magic).
func openSource(name string, stdin io.Reader, report func(Problem)) (*source, error) {
	var rc io.ReadCloser
	var closer io.Closer
	if name == "-" {
		rc = io.NopCloser(stdin)
	} else {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("failed to open audit log: %w", err)
		}
		rc = f
	}
	br := bufio.NewReaderSize(rc, 256<<10)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			rc.Close()
			return nil, fmt.Errorf("failed to open audit log %s: %w", name, err)
		}
		zr.Multistream(true)
		br = bufio.NewReaderSize(zr, 256<<10)
		closer = multiCloser{zr, rc}
	} else {
		closer = rc
	}
	return &source{name: name, r: br, closer: closer, report: report}, nil
}

type multiCloser []io.Closer

func (m multiCloser) Close() error {
	var errs []error
	for _, c := range m {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// readLine returns the next line without its newline, reusing s.buf; a
// line over maxLine is returned as (nil, true) after skipping it.
func (s *source) readLine() (line []byte, tooLong bool, err error) {
	s.buf = s.buf[:0]
	for {
		chunk, err := s.r.ReadSlice('\n')
		if len(s.buf)+len(chunk) > maxLine {
			tooLong = true
			s.buf = s.buf[:0]
		} else if !tooLong {
			s.buf = append(s.buf, chunk...)
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && (len(s.buf) > 0 || tooLong):
			s.line++
			return bytes.TrimRight(s.buf, "\r\n"), tooLong, nil
		case err != nil:
			return nil, false, err
		}
		s.line++
		return bytes.TrimRight(s.buf, "\r\n"), tooLong, nil
	}
}

// advance peeks the next event into s.next; false at the end of input.
func (s *source) advance() (bool, error) {
	for {
		if len(s.pending) > 0 {
			raw := s.pending[0]
			s.pending = s.pending[1:]
			ev := &event{}
			if err := json.Unmarshal(raw, ev); err != nil {
				s.report(Problem{File: s.name, Line: s.pline, Err: "failed to decode an item of an EventList: " + err.Error()})
				continue
			}
			if ev.Verb != "deletecollection" {
				ev.Response = nil // see decodeEvent
			}
			if p := ev.check(); p != "" {
				s.report(Problem{File: s.name, Line: s.pline, Err: p})
				continue
			}
			s.next, s.nextLine = ev, s.pline
			return true, nil
		}
		line, tooLong, err := s.readLine()
		if errors.Is(err, io.EOF) {
			s.next = nil
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("failed to read audit log %s: %w", s.name, err)
		}
		if tooLong {
			s.report(Problem{File: s.name, Line: s.line, Err: fmt.Sprintf("line longer than %d MiB skipped", maxLine>>20)})
			continue
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		ev := &event{}
		if s.intern == nil {
			s.intern = interner{}
		}
		if err := decodeEvent(line, ev, s.intern); err != nil {
			s.report(Problem{File: s.name, Line: s.line, Err: "failed to decode audit event: " + err.Error()})
			continue
		}
		if ev.Kind == "EventList" {
			s.pending, s.pline = ev.Items, s.line
			continue
		}
		if p := ev.check(); p != "" {
			s.report(Problem{File: s.name, Line: s.line, Err: p})
			continue
		}
		s.next, s.nextLine = ev, s.line
		return true, nil
	}
}

// check says what makes an event unusable, or "".
func (ev *event) check() string {
	switch {
	case ev.Kind != "" && ev.Kind != "Event":
		return fmt.Sprintf("not an audit event (kind %q)", ev.Kind)
	case ev.AuditID == "":
		return "audit event without auditID"
	case ev.Received.IsZero():
		return "audit event without requestReceivedTimestamp"
	case ev.Verb == "":
		return "audit event without verb"
	}
	ev.Items = nil
	if ev.StageTime.IsZero() {
		ev.StageTime = ev.Received
	}
	return ""
}

// merger hands out the events of several sources, smallest stageTimestamp
// first (each source is in stage order: the API server writes an event when
// its stage happens).
type merger []*source

func (m merger) Len() int { return len(m) }
func (m merger) Less(i, j int) bool {
	return m[i].next.StageTime.Before(m[j].next.StageTime)
}
func (m merger) Swap(i, j int) { m[i], m[j] = m[j], m[i] }
func (m *merger) Push(x any)   { *m = append(*m, x.(*source)) }
func (m *merger) Pop() any {
	old := *m
	s := old[len(old)-1]
	*m = old[:len(old)-1]
	return s
}

// request is one API request: the stages of one auditID merged.
type request struct {
	id        string
	received  time.Time
	verb      string
	uri       string
	user      string
	groups    []string
	userAgent string
	ref       objectRef
	code      int    // 0 when no stage carried a status
	message   string // of the status
	response  json.RawMessage
	complete  bool // a ResponseComplete (or Panic) stage was seen
	authzDeny bool
	file      string
	line      int
	index     int // in the reorder heap
}

func (r *request) merge(ev *event) {
	if ev.Status != nil && (ev.Stage == stageResponseComplete || ev.Stage == stagePanic || r.code == 0) {
		r.code, r.message = ev.Status.Code, ev.Status.Message
	}
	if ev.Stage == stageResponseComplete || ev.Stage == stagePanic {
		r.complete = true
		if len(ev.Response) > 0 {
			r.response = ev.Response
		}
	}
	if ev.Annotations.Decision == "forbid" {
		r.authzDeny = true
	}
}

// needsStatus says whether judging r needs its final status: only budgets
// look at it, and they judge only writes. A read (a watch ends long after it
// starts) is released after the reorder delay whether it completed or not.
func (r *request) needsStatus() bool {
	switch r.verb {
	case "delete", "deletecollection", "create", "update", "patch":
		return true
	}
	return false
}

func newRequest(ev *event, file string, line int) *request {
	r := &request{
		id: ev.AuditID, received: ev.Received, verb: ev.Verb, uri: ev.URI,
		user: ev.User.Username, groups: ev.User.Groups, userAgent: ev.UserAgent,
		file: file, line: line,
	}
	if ev.Impersona != nil {
		r.user, r.groups = ev.Impersona.Username, ev.Impersona.Groups
	}
	if ev.ObjectRef != nil {
		r.ref = *ev.ObjectRef
	}
	r.merge(ev)
	return r
}

// reorder holds requests until no earlier one can still arrive: a min-heap
// by requestReceivedTimestamp, released once the stage time read so far is
// Delay past a request's receipt and its ResponseComplete was seen (or
// MaxWait past it without one: a watch completes long after). Memory is
// bounded by the requests of Delay (MaxWait for incomplete ones), not by
// the log.
type reorder struct {
	heap     reqHeap
	byID     map[string]*request
	done     map[string]time.Time // recently released IDs: a late stage merges into nothing
	doneTick time.Time
	delay    time.Duration
	maxWait  time.Duration
	mark     time.Time // the latest stage time read
	released time.Time // the receipt time of the last request released
	late     int
}

func newReorder(delay, maxWait time.Duration) *reorder {
	return &reorder{byID: map[string]*request{}, done: map[string]time.Time{}, delay: delay, maxWait: maxWait}
}

// add takes one event; it reports whether the event was dropped as too late.
func (o *reorder) add(ev *event, file string, line int) {
	if ev.StageTime.After(o.mark) {
		o.mark = ev.StageTime
	}
	if r := o.byID[ev.AuditID]; r != nil {
		r.merge(ev)
		return
	}
	if _, seen := o.done[ev.AuditID]; seen {
		return // a later stage of a request already judged
	}
	if ev.Received.Before(o.released) {
		o.late++
		return
	}
	r := newRequest(ev, file, line)
	o.byID[r.id] = r
	heap.Push(&o.heap, r)
}

// pop returns the next request that can be released, or nil. flush
// releases everything.
func (o *reorder) pop(flush bool) *request {
	if len(o.heap) == 0 {
		return nil
	}
	r := o.heap[0]
	if !flush {
		age := o.mark.Sub(r.received)
		if age < o.delay || (!r.complete && r.needsStatus() && age < o.maxWait) {
			return nil
		}
	}
	heap.Pop(&o.heap)
	delete(o.byID, r.id)
	o.released = r.received
	o.done[r.id] = r.received
	if o.mark.Sub(o.doneTick) > o.maxWait {
		// Forget released IDs older than maxWait: no stage of theirs can
		// still be waited for.
		for id, t := range o.done {
			if o.mark.Sub(t) > 2*o.maxWait {
				delete(o.done, id)
			}
		}
		o.doneTick = o.mark
	}
	return r
}

type reqHeap []*request

func (h reqHeap) Len() int { return len(h) }
func (h reqHeap) Less(i, j int) bool {
	if h[i].received.Equal(h[j].received) {
		return h[i].id < h[j].id
	}
	return h[i].received.Before(h[j].received)
}
func (h reqHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *reqHeap) Push(x any) {
	r := x.(*request)
	r.index = len(*h)
	*h = append(*h, r)
}
func (h *reqHeap) Pop() any {
	old := *h
	r := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return r
}

// responseItems returns how many items a deletecollection's response body
// lists and their names, or ok false when the log has no usable body.
func responseItems(raw json.RawMessage) (names []string, ok bool) {
	if len(raw) == 0 {
		return nil, false
	}
	var list struct {
		Kind  string `json:"kind"`
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal(raw, &list); err != nil || list.Items == nil && !strings.HasSuffix(list.Kind, "List") {
		return nil, false
	}
	names = make([]string, len(list.Items))
	for i, it := range list.Items {
		names[i] = it.Metadata.Name
	}
	return names, true
}
