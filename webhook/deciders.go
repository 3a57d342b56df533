package webhook

import (
	"fmt"
	"runtime/debug"
	"time"

	"github.com/kubedefender/kubedefender/limiter"
)

// deciderIdle is how long a decider waits for another decision before it
// exits. It is real time: no decision's outcome depends on it.
const deciderIdle = 10 * time.Second

// deciders run the engine's decisions off the request's goroutine (so that a
// request can be answered when its decision times out). A decider that
// finished one decision takes the next one waiting, for up to deciderIdle:
// a fresh goroutine per decision cost a goroutine start and, every time, the
// growth of its stack to the engine's depth. There are as many deciders as
// decisions run at once; a decision whose engine never returns keeps its
// decider, as it kept its goroutine before.
type deciders struct {
	jobs chan *decideJob // unbuffered: a job goes only to a decider waiting
}

// decideJob is one decision: the engine's answer, or its panic, goes to done.
type decideJob struct {
	engine Engine
	ctx    *lazyDeadline
	a      *limiter.Attributes
	done   chan decided
}

func newDeciders() *deciders { return &deciders{jobs: make(chan *decideJob)} }

// start runs j on a waiting decider, or on a new one.
func (p *deciders) start(j *decideJob) {
	select {
	case p.jobs <- j:
	default:
		go p.run(j)
	}
}

func (p *deciders) run(j *decideJob) {
	t := time.NewTimer(deciderIdle)
	defer t.Stop()
	for {
		j.run()
		t.Reset(deciderIdle)
		select {
		case j = <-p.jobs:
		case <-t.C:
			return
		}
	}
}

// run asks the engine; a panic in the engine is handed to the waiting
// request (which re-panics with it) instead of ending the process.
func (j *decideJob) run() {
	defer j.ctx.release()
	defer func() {
		if p := recover(); p != nil {
			j.done <- decided{panic: fmt.Sprintf("%v (in the engine)\n%s", p, debug.Stack())}
		}
	}()
	j.done <- decided{d: j.engine.Decide(j.ctx, j.a)}
}
