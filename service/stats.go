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
	mu           sync.Mutex
	remove, sync opAnswers
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

// of is op's counts; nil for an operation the STATS do not report.
func (o *AnswerStats) of(op passkey.Op) *opAnswers {
	switch op {
	case passkey.OpRemove:
		return &o.remove
	case passkey.OpSync:
		return &o.sync
	}
	return nil
}

// Answered counts one answer (handler.Observer.Answered).
func (o *AnswerStats) Answered(op passkey.Op, code passkey.Code, errorText string, storedAt time.Time) {
	s := o.of(op)
	if s == nil {
		return
	}
	latency := time.Since(storedAt)
	o.mu.Lock()
	defer o.mu.Unlock()
	s.answered++
	s.latency += latency
	if code != 0 {
		s.errors++
		s.lastError = errorText
	}
}

// statsHandler gives the forwarding endpoints their consumer-side outcomes.
func (o *AnswerStats) statsHandler(e *micro.Endpoint) any {
	s := o.of(passkey.Op(e.Name))
	if s == nil {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	st := EndpointAnswers{Answered: s.answered, Errors: s.errors, LastError: s.lastError}
	if s.answered > 0 {
		st.AverageLatency = s.latency / time.Duration(s.answered)
	}
	return st
}
