// Package outbox publishes the change events a partition's store holds in
// its outbox (written in the transaction of their change) to stream
// PASSKEYS_EVENTS, each once, each user's in order.
package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/passkeys/worker/event"
	"github.com/passkeys/worker/internal/clock"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/traceprop"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
)

// Observer is told what the event publisher does; metrics.Metrics is one.
type Observer interface {
	EventsPublished(n int)
}

// Publisher publishes the events the store's outbox holds to stream
// PASSKEYS_EVENTS, each with Nats-Msg-Id equal to its id, and deletes each
// from the outbox once JetStream has acknowledged it. A user's events go
// out in the order of its changes: a round publishes at most one event of
// each user, so an event that fails is tried again before that user's next.
// Replies never wait for events.
type Publisher struct {
	JS       jetstream.JetStream
	Store    *storage.Store
	Log      zerolog.Logger
	Observer Observer
	// Published, when set, reads the last event stream PASSKEYS_EVENTS
	// holds for a user; Dedup is the stream's duplicate window. An event
	// older than half the window (it waited in an outbox through an
	// outage, or came with an old snapshot) is published only when the
	// stream has no event of its user's as new: past the window the stream
	// would take it twice.
	Published *jsread.Reader
	Dedup     time.Duration
	// Tracer, when set, records a span per event published, in the trace
	// of the command that made the change.
	Tracer trace.Tracer

	wake chan struct{}
	// started is when Run began, and before the outbox keys it held then:
	// only those, or any once Run has gone on for half the window, can be
	// that old; the others are not looked up.
	started time.Time
	before  map[string]bool

	mu         sync.Mutex
	notDrained time.Time // since when the outbox has not been emptied; zero while it is
}

// Waiting tells how long events have waited in the outbox without it
// being emptied (zero when it was emptied on the last try): /readyz says
// not ready past a minute.
func (e *Publisher) Waiting() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.notDrained.IsZero() {
		return 0
	}
	return time.Since(e.notDrained)
}

func (e *Publisher) noteDrained(drained bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case drained:
		e.notDrained = time.Time{}
	case e.notDrained.IsZero():
		e.notDrained = time.Now()
	}
}

// maxEventsRound bounds the events one round publishes.
const maxEventsRound = 1024

// Wake has the publisher look at the outbox now (after a commit); it never
// blocks.
func (e *Publisher) Wake() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Run publishes until ctx ends: at once when woken, and every second in
// any case (an outage, events left by a crash).
func (e *Publisher) Run(ctx context.Context) {
	e.started, e.before = time.Now(), map[string]bool{}
	if pending, err := e.Store.PendingEvents(math.MaxInt); err == nil {
		for _, ev := range pending {
			e.before[string(ev.Key)] = true
		}
	} else {
		e.before = nil // every event is looked at
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for {
			n, err := e.publishRound(ctx)
			if err != nil {
				e.Log.Warn().Err(err).Msg("events not published yet; they stay in the outbox and are tried again")
				e.noteDrained(false)
				break
			}
			if n == 0 {
				e.noteDrained(true)
				break
			}
		}
		select {
		case <-ctx.Done():
			_ = e.Store.FlushDeletes() // else published again (and dropped) at the next start
			return
		case <-e.wake:
		case <-tick.C:
			if err := e.Store.FlushDeletes(); err != nil {
				e.Log.Warn().Err(err).Msg("published events not yet deleted from the outbox; tried again")
			}
		}
	}
}

// New returns a publisher; Run starts it.
func New(js jetstream.JetStream, store *storage.Store, log zerolog.Logger, o Observer) *Publisher {
	return &Publisher{JS: js, Store: store, Log: log, Observer: o, wake: make(chan struct{}, 1)}
}

// publishedAlready tells whether an old event (older than half the
// duplicate window) is in the events stream already: the stream's last
// event of its user has its sequence or a later one (a user's events are
// published in order).
func (e *Publisher) publishedAlready(ctx context.Context, ev storage.PendingEvent) (bool, error) {
	if e.Published == nil || e.Dedup == 0 {
		return false, nil
	}
	if e.before != nil && !e.before[string(ev.Key)] && time.Since(e.started) < e.Dedup/2 {
		return false, nil // written since Run began: younger than half the window
	}
	var doc struct {
		Time time.Time `json:"time"`
	}
	if json.Unmarshal(ev.Doc, &doc) != nil || clock.Wall().Sub(doc.Time) < e.Dedup/2 {
		return false, nil
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := e.Published.Last(gctx, topology.EventsPrefix+"."+ev.UserID)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	user, seq, ok := event.ParseID(m.Header.Get(nats.MsgIdHdr))
	return ok && user == ev.UserID && seq >= ev.Seq, nil
}

// publishRound publishes the first waiting event of each user (of the
// first maxEventsRound waiting) and deletes the acknowledged ones; it
// returns how many it published.
func (e *Publisher) publishRound(ctx context.Context) (int, error) {
	pending, err := e.Store.PendingEvents(maxEventsRound)
	if err != nil || len(pending) == 0 {
		return 0, err
	}
	type inFlight struct {
		key    []byte
		future jetstream.PubAckFuture
		span   trace.Span
	}
	var sent []inFlight
	var done [][]byte
	last := ""
	for i, ev := range pending {
		if i > 0 && ev.UserID == last {
			continue // that user's next event waits for this round's
		}
		last = ev.UserID
		if published, err := e.publishedAlready(ctx, ev); err != nil {
			return 0, err
		} else if published {
			done = append(done, ev.Key)
			continue
		}
		msg := eventMsg(ev)
		span := e.span(ctx, msg)
		f, err := e.JS.PublishMsgAsync(msg)
		if err != nil {
			span.End()
			break
		}
		sent = append(sent, inFlight{ev.Key, f, span})
	}
	var firstErr error
	for _, s := range sent {
		select {
		case <-s.future.Ok():
			done = append(done, s.key)
		case err := <-s.future.Err():
			s.span.SetStatus(codes.Error, err.Error())
			if firstErr == nil {
				firstErr = err
			}
		case <-ctx.Done():
			return len(done), ctx.Err()
		}
		s.span.End()
	}
	if len(done) > 0 {
		// Out of the outbox with the partition's next commit, or the
		// publisher's next tick: not a commit of their own each round.
		e.Store.DeleteEventsLater(done)
		if e.Observer != nil {
			e.Observer.EventsPublished(len(done))
		}
	}
	return len(done), firstErr
}

// eventMsg is the message that publishes ev: its id as Nats-Msg-Id, and its
// trace context also as headers, for consumers that read NATS headers
// rather than the document's extension.
func eventMsg(ev storage.PendingEvent) *nats.Msg {
	msg := nats.NewMsg(topology.EventsPrefix + "." + ev.UserID)
	msg.Header.Set(nats.MsgIdHdr, event.ID(ev.UserID, ev.Seq))
	msg.Header.Set("Content-Type", "application/cloudevents+json")
	msg.Data = ev.Doc
	tr := event.TraceOf(ev.Doc)
	traceprop.Set(msg.Header, tr.Parent, tr.State)
	return msg
}

// span starts the publication's span, in the trace msg's headers carry; a
// span that records nothing without a Tracer or a trace.
func (e *Publisher) span(ctx context.Context, msg *nats.Msg) trace.Span {
	if e.Tracer == nil || msg.Header.Get(traceprop.HeaderParent) == "" {
		return noop.Span{}
	}
	_, span := e.Tracer.Start(traceprop.Extract(ctx, msg.Header), "passkeys.event.publish",
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
			attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", msg.Subject),
			attribute.String("messaging.message.id", msg.Header.Get(nats.MsgIdHdr))))
	return span
}
