// Package handler handles a partition's JetStream messages: the Processor takes
// them from the partition's durable consumer in batches, has them checked
// and committed in stream order (command.Applier, the order check filling
// what another worker took), and only then replies and acknowledges. It
// also reads the partition's stored commands without a consumer: CatchUp
// for a partition taken over, Replay for an operator. A fault of this
// machine makes the partition wait, never skip.
package handler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/clock"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/internal/traceprop"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/reply"
)

// Processor reads a partition's commands from its durable consumer in
// batches, has the Applier apply each batch in one transaction, and only
// then replies to and acknowledges each command.
type Processor struct {
	// Partition is the partition the consumer delivers: its Applier
	// applies, and it knows what was applied (the order check's).
	Partition *Partition
	// Conn publishes replies.
	Conn *nats.Conn
	Log  zerolog.Logger
	// Wait is how long the partition waits before it tries a command that
	// could not be applied again (retry.Wait): as long as it takes.
	Wait retry.Policy
	// PriorityGroup is the group the consumer is pulled with, when it has
	// priority groups (topology.PriorityGroup).
	PriorityGroup string
	// Observer is told what happens.
	Observer Observer
	// Committed, when set, is called after each transaction that
	// committed: the event publisher's Wake.
	Committed func()
	// Tracer, when set, records spans: each command's apply (a child of
	// the trace context the command carries) and reply, and each batch's
	// check and commit (linked to its commands' spans). Without it a
	// command's trace context still goes into its reply's headers and its
	// event.
	Tracer trace.Tracer
	// NoEarlyAnswer: a command applied from the stream (the order check's)
	// is answered when its delivery comes, not at once (the fault
	// campaign's measure of the early answers).
	NoEarlyAnswer bool

	ackWait time.Duration // the consumer's, for giveBack
	order   orderCheck
}

// Observer is told what the processor does: metrics, the micro service's
// STATS, /readyz. A nil func is not told.
type Observer struct {
	// Batch reports one attempt at a batch transaction.
	Batch func(size int, took time.Duration, err error)
	// Answered reports a command's answer (code 0 and no text: success),
	// with the time the stream stored it.
	Answered func(op passkey.Op, code passkey.Code, errorText string, storedAt time.Time)
	// Redelivered reports a command delivered more than once.
	Redelivered func()
	// EventWritten reports a change the processor applied: one event
	// written into the outbox.
	EventWritten func()
	// AnsweredEarly reports a reply sent before the command's delivery came
	// here (EarlyAnswers, the order check): the delivery, when it comes, is
	// answered again and reported to Answered.
	AnsweredEarly func()
}

// pullExpiry is how long a partition's pull request waits at the server;
// the server sends a heartbeat every fifth of it. A pull request is held by the consumer's leader: when that server
// is frozen or cut off, the request and its heartbeats are lost, and the
// partition is pulled again once two heartbeats are missed. With nats.go's
// defaults (30 s, a heartbeat every 15 s) that took 30 s, and an external
// fault test saw one partition unserved for 44 s after a node's freeze;
// with 4 s it takes 1.6 s, for a pull request and 5 heartbeats every 4 s
// per idle partition. It stays under the consumer's pin TTL
// (topology.PinnedTTL, 5 s): the server keeps a pin only while pull
// requests come within it, and the next one is sent when the last expired.
const pullExpiry = 4 * time.Second

// DrainTimeout bounds how long a stopping consumer waits for the commands
// in its buffer.
const DrainTimeout = 5 * time.Second

// Run consumes until ctx ends, then stops pulling, finishes the commands in
// hand and returns nil. It returns an error if consumption stops for another
// reason, such as the consumer being deleted.
func (c *Processor) Run(ctx context.Context, cons jetstream.Consumer) error {
	iter, err := cons.Messages(c.pullOptions()...)
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	if info := cons.CachedInfo(); info != nil {
		c.ackWait = info.Config.AckWait
		if c.ackWait > 0 && c.Wait.Max > c.ackWait/2 {
			// A batch that waits on a fault is kept in progress once per
			// pause (Pausing): no pause may outlast the ack wait, or its
			// commands are delivered again meanwhile.
			c.Wait.Max = c.ackWait / 2
		}
	}
	p := &pump{iter: iter, msgs: make(chan delivery, c.Partition.MaxBatch), err: make(chan error, 1),
		done: make(chan struct{}), abandon: make(chan struct{}), log: c.Log}
	go p.run()
	defer context.AfterFunc(ctx, p.drain)()

	// Two stages: this loop takes a batch and checks it (signatures, JSON;
	// in parallel), the committer applies the batches in order, each in one
	// transaction, and replies and acks; so one batch's fsyncs overlap the
	// next one's checks, and a user's commands still commit in stream order.
	checkedBatches := make(chan checkedBatch, 1)
	committed := make(chan struct{})
	go func() {
		defer close(committed)
		for b := range checkedBatches {
			c.commitBatch(ctx, b)
		}
	}()
	batch := make([]delivery, 0, c.Partition.MaxBatch)
	for {
		var ok bool
		if batch, ok = c.nextBatch(p, batch[:0]); !ok {
			break
		}
		b, ok := c.checkBatch(ctx, batch)
		clear(batch) // the array is reused: without its messages, kept until overwritten
		if ok {
			checkedBatches <- b
		}
	}
	close(checkedBatches)
	<-committed
	select {
	case <-p.abandon:
		c.Log.Warn().Dur("waited", DrainTimeout).Msg("stopping without the commands still buffered; they will be redelivered")
		return nil
	default:
	}
	if err := <-p.err; err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	if ctx.Err() == nil {
		return errors.New("consume: the message iterator closed")
	}
	return nil
}

// pullOptions are the options of the consumer's pull requests.
func (c *Processor) pullOptions() []jetstream.PullMessagesOpt {
	opts := []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(2 * c.Partition.MaxBatch),
		jetstream.PullExpiry(pullExpiry), jetstream.PullHeartbeat(pullExpiry / 5)}
	if c.PriorityGroup != "" {
		opts = append(opts, jetstream.PullPriorityGroup(c.PriorityGroup))
	}
	return opts
}

// nextBatch waits for a command, then takes whatever else is in hand, up to
// the partition's MaxBatch, without waiting: a batch is what arrived while the last one
// committed. ok is false once the pump has stopped or was abandoned.
func (c *Processor) nextBatch(p *pump, batch []delivery) ([]delivery, bool) {
	select {
	case m, ok := <-p.msgs:
		if !ok {
			return batch, false
		}
		batch = append(batch, m)
	case <-p.abandon:
		return batch, false
	}
	for len(batch) < c.Partition.MaxBatch {
		select {
		case m, ok := <-p.msgs:
			if !ok {
				return batch, true
			}
			batch = append(batch, m)
		default:
			return batch, true
		}
	}
	return batch, true
}

// pump moves messages from the pull iterator into a channel, so a batch can
// fill without blocking on the iterator.
type pump struct {
	iter    jetstream.MessagesContext
	msgs    chan delivery // msg and at only
	err     chan error    // the reason the pump stopped; nil for a drain
	done    chan struct{} // closed when the pump has stopped
	abandon chan struct{} // closed when a stopping consumer gives up on the buffer
	log     zerolog.Logger
}

func (p *pump) run() {
	defer close(p.done)
	defer close(p.msgs)
	for {
		msg, err := p.iter.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			p.err <- nil
			return
		}
		if err != nil {
			p.log.Warn().Err(err).Msg("pull from consumer")
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				p.iter.Stop()
				p.err <- err
				return
			}
			continue
		}
		select {
		case p.msgs <- delivery{msg: msg, at: clock.Now()}:
		case <-p.abandon:
			p.err <- nil
			return
		}
	}
}

// drain stops pulling and lets the buffered commands through (a stopping
// processor hands back those it does not answer: giveBack). If the drain
// cannot finish (NATS is gone), it gives up on them after DrainTimeout:
// unacknowledged, they come back to the next worker after their ack wait.
func (p *pump) drain() {
	p.iter.Drain()
	t := time.NewTimer(DrainTimeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.iter.Stop()
		close(p.abandon)
	}
}

// delivery is a message with what the adapter read from it.
type delivery struct {
	msg jetstream.Msg
	// at is when the pump took it: whether handing it back may touch
	// another worker's delivery.
	at   clock.Instant
	meta *jetstream.MsgMetadata
	cmd  *command.Command
	log  zerolog.Logger
	// span is the command's apply span, ctx holds it (Tracer set only).
	span trace.Span
	ctx  context.Context
}

// checkedBatch is a batch that was checked and waits for its commit.
type checkedBatch struct {
	hand    []delivery
	checked *command.Checked
}

// checkBatch reads each message (its metadata, reply subject, log fields)
// and has the Applier check the batch; ok is false when no message was a
// command.
func (c *Processor) checkBatch(ctx context.Context, msgs []delivery) (checkedBatch, bool) {
	hand := make([]delivery, 0, len(msgs))
	cmds := make([]*command.Command, 0, len(msgs))
	for _, h := range msgs {
		m := h.msg
		meta, err := m.Metadata()
		if err != nil {
			c.Log.Error().Err(err).Str("subject", command.Truncate(m.Subject())).Msg("message without JetStream metadata")
			_ = m.Term()
			continue
		}
		cmd, err := commandOf(m.Subject(), m.Headers(), m.Data(), meta.Sequence.Stream, meta.Timestamp)
		if err != nil {
			c.Log.Error().Err(err).Str("subject", command.Truncate(m.Subject())).Msg("message on a subject that holds no command")
			_ = m.Term()
			continue
		}
		h.meta, h.cmd = meta, cmd
		h.log = c.Log.With().
			Str("subject", command.Truncate(h.cmd.Subject)).
			Uint64("stream_seq", meta.Sequence.Stream).
			Str("msg_id", command.Truncate(nats.Header(h.cmd.Header).Get(command.HeaderMsgID))).
			Uint64("num_delivered", meta.NumDelivered).
			Logger()
		if meta.NumDelivered > 1 {
			// Redeliveries mean a lost ack, or an ack wait that ran
			// out: worth a line at the default level.
			h.log.Warn().Msg("command redelivered")
			if c.Observer.Redelivered != nil {
				c.Observer.Redelivered()
			}
		}
		if c.Tracer != nil {
			h.ctx, h.span = c.Tracer.Start(traceprop.Extract(ctx, m.Headers()), "passkeys.apply",
				trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
					attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", h.cmd.Subject),
					attribute.Int64("messaging.nats.stream_seq", int64(meta.Sequence.Stream)), attribute.Int("passkeys.partition", c.Partition.ID)))
		}
		hand = append(hand, h)
		cmds = append(cmds, h.cmd)
	}
	if len(cmds) == 0 {
		return checkedBatch{}, false
	}
	_, span := c.batchSpan(ctx, "passkeys.batch.check", hand)
	checked := c.Partition.Applier.Check(cmds)
	span.End()
	return checkedBatch{hand: hand, checked: checked}, true
}

// commitBatch applies a checked batch in stream order: first whatever the
// partition's stream holds before it that this worker has not applied
// (fill), then the batch itself, each command replied to and
// acknowledged only after its transaction committed. A fault of this machine
// (the store fails, a record is damaged) makes the partition wait and try
// again: nothing is nacked or given up, so no later command overtakes one
// that is not applied. Only a stopping worker, or one that lost the
// partition, leaves a batch unfinished: it hands the commands it did not
// answer back (giveBack), and they come to the partition's next holder.
func (c *Processor) commitBatch(ctx context.Context, b checkedBatch) {
	ctx, span := c.batchSpan(ctx, "passkeys.batch.commit", b.hand)
	defer span.End()
	if err := c.fill(ctx, b.hand); err != nil {
		c.giveBack(ctx, b.hand, "stopping before the batch's commit")
		return
	}
	answered := 0 // b.hand[:answered] are answered: Done comes in stream order
	err := c.Partition.Applier.CommitInOrder(ctx, b.checked, command.InOrder{Wait: c.Wait,
		Committed: func(n int, took time.Duration, err error) {
			if c.Observer.Batch != nil {
				c.Observer.Batch(n, took, err)
			}
			if err == nil && c.Committed != nil {
				c.Committed()
			}
		},
		Done: func(i int, r command.Result) {
			answered = i + 1
			c.answer(b.hand[i], r)
			c.Partition.advance(b.hand[i].meta.Sequence.Stream)
		},
		Pausing: func(from int) {
			// Kept in progress: the server does not redeliver them past
			// the one that waits.
			for _, h := range b.hand[from:] {
				_ = h.msg.InProgress()
			}
		}})
	if err != nil {
		c.Log.Warn().Err(err).Msg("stopping with commands not applied; they are handed back to the stream")
		c.giveBack(ctx, b.hand[answered:], "stopping with the command not applied")
	}
}

// giveBack hands commands a stopping processor did not answer back to the
// stream (a nak: the server delivers them again after GiveBackDelay, to
// whichever worker pulls the partition then) rather than leaving them to
// their ack wait: a partition let go of under load, or a worker stopping,
// would otherwise leave their requesters waiting the ack wait (10 s).
// Nothing changes for correctness: unacknowledged, they would come back
// anyway, and whoever applies them applies them in stream order, once.
//
// Only a stopping processor (ctx ended: let go of, the lease lost, the
// worker stopping) hands back, and only deliveries that are surely still
// its own: taken less than the ack wait less handBackMargin ago (by a clock
// that counts a suspended machine's sleep, so the server has not given them
// to anyone else yet), sent while connected (not buffered for a reconnect).
// The server takes a nak for a command's current delivery whichever
// delivery it names, so a late one (a worker woken from a freeze, naks
// flushed after a reconnect) would cut the ack wait of the worker that
// holds the command now.
//
// Their apply spans end, unanswered, with why.
func (c *Processor) giveBack(ctx context.Context, hand []delivery, why string) {
	for _, h := range hand {
		if h.span != nil && h.span.IsRecording() {
			h.span.SetStatus(codes.Unset, why)
			h.span.End()
		}
	}
	if ctx.Err() == nil || c.ackWait <= handBackMargin || (c.Conn != nil && !c.Conn.IsConnected()) {
		return
	}
	for _, h := range hand {
		if clock.Since(h.at) < c.ackWait-handBackMargin {
			_ = h.msg.NakWithDelay(GiveBackDelay)
		}
	}
}

// GiveBackDelay is how soon commands a stopping worker hands back are
// delivered again. The worker has stopped pulling by then (its drain sends
// the unsubscribe within milliseconds); the partition's next holder takes
// longer than that to start (the old holder's final snapshot, the lease,
// the load), so the delay costs nobody any time.
const GiveBackDelay = time.Second

// handBackMargin keeps hand-backs well inside the ack wait.
const handBackMargin = 2 * time.Second

// traceAnswer records, on a command's apply span, its answer, and the
// wait for its commit: from when the stream stored the command (which the
// caller waited through) to its transaction's end.
func (c *Processor) traceAnswer(h delivery, r command.Result, wire reply.Wire) {
	_, wait := c.Tracer.Start(h.ctx, "passkeys.commit.wait",
		trace.WithTimestamp(h.meta.Timestamp), trace.WithAttributes(attribute.Int64("messaging.nats.stream_seq", int64(h.meta.Sequence.Stream))))
	wait.End()
	h.span.SetAttributes(attribute.String("passkeys.op", string(r.Op)), attribute.String("passkeys.user_id", r.UserID),
		attribute.Bool("passkeys.repeat", r.Repeat), attribute.Int("passkeys.code", int(wire.Code)))
	if wire.IsError() {
		h.span.SetStatus(codes.Error, wire.ErrorText)
	}
}

// batchSpan starts a batch's span, linked to its commands' apply spans; a
// span that records nothing without a Tracer.
func (c *Processor) batchSpan(ctx context.Context, name string, hand []delivery) (context.Context, trace.Span) {
	if c.Tracer == nil {
		return ctx, noop.Span{}
	}
	links := make([]trace.Link, 0, len(hand))
	for _, h := range hand {
		if h.span != nil {
			links = append(links, trace.Link{SpanContext: h.span.SpanContext()})
		}
	}
	return c.Tracer.Start(ctx, name, trace.WithLinks(links...), trace.WithAttributes(
		attribute.Int("passkeys.partition", c.Partition.ID), attribute.Int("passkeys.batch_size", len(hand))))
}

// answer replies to and acknowledges one message, after its transaction
// committed.
func (c *Processor) answer(h delivery, r command.Result) {
	if r.Control {
		h.log.Info().Msg("control entry applied: the partition's commands after it are judged by its key set")
		if h.span != nil {
			h.span.End()
		}
		if err := h.msg.Ack(); err != nil {
			h.log.Error().Err(err).Msg("ack")
		}
		return
	}
	log := h.log.With().Str("user_id", r.UserID).Logger()
	// Rendered after the commit: no reply body is built under the store's
	// write lock.
	if r.Skipped {
		log.Error().Msg("command applied already but its outcome is not kept; answered OUTCOME-UNAVAILABLE")
	}
	wire := wireOf(r)
	ev := log.Info().Str("op", string(r.Op)).Bool("repeat", r.Repeat)
	if wire.IsError() {
		ev = ev.Str("error_code", wire.ErrorCode).Str("error", wire.ErrorText)
	}
	ev.Msg("command processed")
	if h.span != nil {
		c.traceAnswer(h, r, wire)
		defer h.span.End()
	}
	if c.Observer.Answered != nil {
		c.Observer.Answered(r.Op, wire.Code, wire.ErrorText, h.meta.Timestamp)
	}
	if !r.Repeat && !r.Skipped && r.Answer.Err == nil && c.Observer.EventWritten != nil {
		c.Observer.EventWritten()
	}
	if r.ReplyTo != "" {
		if h.span != nil {
			_, span := c.Tracer.Start(h.ctx, "passkeys.reply", trace.WithSpanKind(trace.SpanKindProducer))
			defer span.End()
		}
		if err := c.Conn.PublishMsg(replyMsg(r.ReplyTo, h.cmd, wire)); err != nil {
			log.Error().Err(err).Msg("reply")
		}
	}
	if err := h.msg.Ack(); err != nil {
		log.Error().Err(err).Msg("ack")
	}
}
