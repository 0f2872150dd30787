package service

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/passkeys/worker/passkey"
)

// AnswerStats counts, per operation, the answers the consumer sent. The micro
// service's own counters only see the forwarding endpoints' handlers, which
// return once a command is stored; its STATS carry these in each
// endpoint's data, so they tell what callers were actually answered.
type AnswerStats struct {
	mu  sync.Mutex
	ops map[passkey.Op]*opAnswers
}

type opAnswers struct {
	answered, errors uint64
	lastError        string
	latency          time.Duration
}

// EndpointAnswers is an endpoint's data in $SRV.STATS.
type EndpointAnswers struct {
	// Answered counts the commands of this operation the worker answered,
	// whether they came through the endpoint or straight into the stream.
	Answered uint64 `json:"answered"`
	// Errors counts those answered with an error.
	Errors    uint64 `json:"errors"`
	LastError string `json:"last_error,omitempty"`
	// AverageLatency is from the stream timestamp to the reply, in nanoseconds.
	AverageLatency time.Duration `json:"average_latency"`
}

// Answered counts one answer (handler.Observer.Answered).
func (o *AnswerStats) Answered(op passkey.Op, code passkey.Code, errorText string, storedAt time.Time) {
	if op == "" {
		return
	}
	latency := time.Since(storedAt)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ops == nil {
		o.ops = map[passkey.Op]*opAnswers{}
	}
	s := o.ops[op]
	if s == nil {
		s = &opAnswers{}
		o.ops[op] = s
	}
	s.answered++
	s.latency += latency
	if code != 0 {
		s.errors++
		s.lastError = errorText
	}
}

// Stats is what op's endpoint reports.
func (o *AnswerStats) Stats(op passkey.Op) EndpointAnswers {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.ops[op]
	if s == nil {
		return EndpointAnswers{}
	}
	st := EndpointAnswers{Answered: s.answered, Errors: s.errors, LastError: s.lastError}
	if s.answered > 0 {
		st.AverageLatency = s.latency / time.Duration(s.answered)
	}
	return st
}

// statsHandler gives the forwarding endpoints their consumer-side outcomes.
func (o *AnswerStats) statsHandler(e *micro.Endpoint) any {
	switch op := passkey.Op(e.Name); op {
	case passkey.OpRemove, passkey.OpSync:
		return o.Stats(op)
	default:
		return nil
	}
}
