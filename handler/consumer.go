package handler

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/passkey"
)

// Consumer reads commands from the durable consumer in batches, has the
// Applier apply each batch in one transaction, and only then replies to
// and acknowledges each command.
type Consumer struct {
	Applier *command.Applier
	// Conn publishes replies.
	Conn *nats.Conn
	Log  zerolog.Logger
	// MaxBatch bounds the commands applied in one transaction.
	MaxBatch int
	// MaxDeliver is the consumer's MaxDeliver: the delivery on which a
	// command that still fails gets its final INTERNAL reply.
	MaxDeliver int
	// StoreRetry is how a batch whose commit failed is tried again in
	// place before it is applied in parts (retry.InPlace).
	StoreRetry retry.Policy
	// Redelivery gives the nak delay after a failed delivery (retry.Redelivery).
	Redelivery retry.Policy
	// DeadLetters, when set, records each terminated command in stream
	// PASSKEYS_DLQ.
	DeadLetters jetstream.JetStream
	// Observer, when set, is told what happens: metrics, and the
	// micro service's STATS (AnswerStats). Observers tells several.
	Observer Observer
	// Committed, when set, is called after each batch that committed: the
	// event publisher's Wake.
	Committed func()
}

// Observer is told what the consumer does; metrics.Metrics is one.
type Observer interface {
	// Batch reports one attempt at a batch transaction.
	Batch(size int, took time.Duration, err error)
	// Answered reports a command's answer (code 0 and no text: success),
	// with the time the stream stored it.
	Answered(op passkey.Op, code passkey.Code, errorText string, storedAt time.Time)
	Redelivered()
	Terminated()
	// Changed reports a change the consumer applied: one event written
	// into the outbox.
	Changed()
}

// nopObserver is the Observer of a Consumer that has none.
type nopObserver struct{}

func (nopObserver) Batch(int, time.Duration, error)                      {}
func (nopObserver) Answered(passkey.Op, passkey.Code, string, time.Time) {}
func (nopObserver) Redelivered()                                         {}
func (nopObserver) Changed()                                             {}
func (nopObserver) Terminated()                                          {}

// Observers tells each of its members.
type Observers []Observer

func (os Observers) Batch(size int, took time.Duration, err error) {
	for _, o := range os {
		o.Batch(size, took, err)
	}
}

func (os Observers) Answered(op passkey.Op, code passkey.Code, errorText string, storedAt time.Time) {
	for _, o := range os {
		o.Answered(op, code, errorText, storedAt)
	}
}

func (os Observers) Redelivered() {
	for _, o := range os {
		o.Redelivered()
	}
}

func (os Observers) Changed() {
	for _, o := range os {
		o.Changed()
	}
}

func (os Observers) Terminated() {
	for _, o := range os {
		o.Terminated()
	}
}

// DrainTimeout bounds how long a stopping consumer waits for the commands
// in its buffer.
const DrainTimeout = 5 * time.Second

// Run consumes until ctx ends, then stops pulling, finishes the commands in
// hand and returns nil. It returns an error if consumption stops for another
// reason, such as the consumer being deleted.
func (c *Consumer) Run(ctx context.Context, cons jetstream.Consumer) error {
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(2 * c.MaxBatch))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	p := &pump{iter: iter, msgs: make(chan jetstream.Msg, c.MaxBatch), err: make(chan error, 1),
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
	batch := make([]jetstream.Msg, 0, c.MaxBatch)
	for {
		var ok bool
		if batch, ok = c.nextBatch(p, batch[:0]); !ok {
			break
		}
		if b, ok := c.checkBatch(batch); ok {
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

// nextBatch waits for a command, then takes whatever else is in hand, up to
// MaxBatch, without waiting: a batch is what arrived while the last one
// committed. ok is false once the pump has stopped or was abandoned.
func (c *Consumer) nextBatch(p *pump, batch []jetstream.Msg) ([]jetstream.Msg, bool) {
	select {
	case m, ok := <-p.msgs:
		if !ok {
			return batch, false
		}
		batch = append(batch, m)
	case <-p.abandon:
		return batch, false
	}
	for len(batch) < c.MaxBatch {
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
	msgs    chan jetstream.Msg
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
		case p.msgs <- msg:
		case <-p.abandon:
			p.err <- nil
			return
		}
	}
}

// drain stops pulling and lets the buffered commands through. If the drain
// cannot finish (NATS is gone), it gives up on them after DrainTimeout:
// unacknowledged, they come back to the next worker.
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
	msg     jetstream.Msg
	meta    *jetstream.MsgMetadata
	cmd     *command.Command
	replyTo string
	log     zerolog.Logger
}

// checkedBatch is a batch that was checked and waits for its commit.
type checkedBatch struct {
	hand    []delivery
	checked *command.Checked
}

// checkBatch reads each message (its metadata, reply subject, log fields)
// and has the Applier check the batch; ok is false when no message was a
// command.
func (c *Consumer) checkBatch(msgs []jetstream.Msg) (checkedBatch, bool) {
	hand := make([]delivery, 0, len(msgs))
	cmds := make([]*command.Command, 0, len(msgs))
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			c.Log.Error().Err(err).Str("subject", command.Truncate(m.Subject())).Msg("message without JetStream metadata")
			_ = m.Term()
			continue
		}
		h := delivery{msg: m, meta: meta, cmd: &command.Command{
			Subject:   m.Subject(),
			Header:    command.Header(m.Headers()),
			Body:      m.Data(),
			StreamSeq: meta.Sequence.Stream,
			Timestamp: meta.Timestamp,
		}}
		if replyTo := h.cmd.Header.ValuesFold(command.HeaderReplyTo); command.CheckReplyTo(replyTo) == nil && len(replyTo) == 1 {
			h.replyTo = replyTo[0]
		}
		h.log = c.Log.With().
			Str("subject", command.Truncate(h.cmd.Subject)).
			Uint64("stream_seq", meta.Sequence.Stream).
			Str("msg_id", command.Truncate(nats.Header(h.cmd.Header).Get(command.HeaderMsgID))).
			Uint64("num_delivered", meta.NumDelivered).
			Logger()
		if meta.NumDelivered > 1 {
			// Redeliveries mean a nak, a lost ack or an ack wait that ran
			// out: worth a line at the default level.
			h.log.Warn().Msg("command redelivered")
			c.Observer.Redelivered()
		}
		hand = append(hand, h)
		cmds = append(cmds, h.cmd)
	}
	if len(cmds) == 0 {
		return checkedBatch{}, false
	}
	return checkedBatch{hand: hand, checked: c.Applier.Check(cmds)}, true
}

// commitBatch commits a checked batch (retrying in place, then in parts
// when one command breaks the commit), then replies to and settles each
// command.
func (c *Consumer) commitBatch(ctx context.Context, b checkedBatch) {
	results, err := c.commitWithRetries(ctx, b.checked)
	if err == nil && c.Committed != nil {
		c.Committed()
	}
	if cmds := b.checked.Commands(); err != nil && len(cmds) > 1 {
		// One command may be what breaks the commit: find it, and apply
		// the others without it.
		results, err = c.Applier.ApplyIsolating(cmds), nil
	}
	for i, h := range b.hand {
		var r command.Result
		if err != nil {
			r.Transient = err
		} else {
			r = results[i]
		}
		c.finish(h, r)
	}
}

// commitWithRetries tries a batch's commit again in place when the store
// fails, so a brief fault does not reorder a user's commands through
// redelivery. A stopping worker (ctx ended) does not wait out a pause: the
// batch is then nacked and comes back to the next worker.
func (c *Consumer) commitWithRetries(ctx context.Context, checked *command.Checked) ([]command.Result, error) {
	n := len(checked.Commands())
	attempt := 0
	results, err := retry.Do(ctx, c.StoreRetry, func() ([]command.Result, error) {
		attempt++
		start := time.Now()
		results, err := c.Applier.Commit(checked)
		c.Observer.Batch(n, time.Since(start), err)
		return results, err
	}, func(err error, next time.Duration) {
		c.Log.Warn().Err(err).Int("batch", n).Int("attempt", attempt).Dur("retry_in", next).Msg("store failed; retrying the batch")
	})
	if err != nil {
		c.Log.Error().Err(err).Int("batch", n).Int("attempts", attempt).Msg("store failed after its retries")
	}
	return results, err
}

// finish replies to and settles one message, after its batch committed.
func (c *Consumer) finish(h delivery, r command.Result) {
	log := h.log.With().Str("user_id", r.UserID).Logger()
	if r.Transient != nil {
		if h.meta.NumDelivered < uint64(c.MaxDeliver) {
			delay := c.Redelivery.After(h.meta.NumDelivered)
			log.Warn().Err(r.Transient).Dur("retry_in", delay).Msg("command failed; will retry")
			if err := h.msg.NakWithDelay(delay); err != nil {
				log.Error().Err(err).Msg("nak")
			}
			return
		}
		final := ErrorReply(passkey.ErrRetriesExhausted)
		reason := fmt.Sprintf("failed %d deliveries: %v", h.meta.NumDelivered, r.Transient)
		if err := c.deadLetter(h, reason); err != nil {
			// The server delivers it no more: this log line is the record.
			log.Error().Err(err).Str("reason", reason).Msg("could not record the terminated command in " + DeadLetterStreamName)
		}
		c.reply(h, log, final)
		c.Observer.Terminated()
		c.Observer.Answered(r.Op, final.Code, final.ErrorText, h.meta.Timestamp)
		log.Error().Err(r.Transient).Msg("command failed on its last delivery; terminated")
		if err := h.msg.TermWithReason(reason); err != nil {
			log.Error().Err(err).Msg("term")
		}
		return
	}
	// Rendered after the commit: no reply body is built under the store's
	// write lock.
	reply := Render(r.Answer)
	ev := log.Info().Str("op", string(r.Op)).Bool("repeat", r.Repeat)
	if reply.IsError() {
		ev = ev.Str("error_code", reply.ErrorCode).Str("error", reply.ErrorText)
	}
	ev.Msg("command processed")
	c.reply(h, log, reply)
	c.Observer.Answered(r.Op, reply.Code, reply.ErrorText, h.meta.Timestamp)
	if !r.Repeat && r.Answer.Err == nil {
		c.Observer.Changed()
	}
	if err := h.msg.Ack(); err != nil {
		log.Error().Err(err).Msg("ack")
	}
}

// Headers of a dead-letter record. The original's Authorization is not
// kept: a bearer token does not belong at rest; an operator re-drives a
// command with a token of their own.
const (
	HeaderDLQSubject     = "Passkeys-Subject"
	HeaderDLQStreamSeq   = "Passkeys-Stream-Seq"
	HeaderDLQTimestamp   = "Passkeys-Timestamp"
	HeaderDLQDelivered   = "Passkeys-Num-Delivered"
	HeaderDLQReason      = "Passkeys-Reason"
	HeaderDLQMsgID       = "Passkeys-Msg-Id"
	HeaderDLQReplyTo     = "Passkeys-Reply-To"
	HeaderDLQContentType = "Passkeys-Content-Type"
)

// deadLetter records a terminated command in PASSKEYS_DLQ: its subject,
// headers (less Authorization), body, stream sequence and the reason.
func (c *Consumer) deadLetter(h delivery, reason string) error {
	if c.DeadLetters == nil {
		return nil
	}
	seq := strconv.FormatUint(h.meta.Sequence.Stream, 10)
	msg := nats.NewMsg(DeadLetterPrefix + "." + seq)
	msg.Data = h.cmd.Body
	msg.Header.Set(HeaderDLQSubject, h.cmd.Subject)
	msg.Header.Set(HeaderDLQStreamSeq, seq)
	msg.Header.Set(HeaderDLQTimestamp, h.meta.Timestamp.UTC().Format(time.RFC3339Nano))
	msg.Header.Set(HeaderDLQDelivered, strconv.FormatUint(h.meta.NumDelivered, 10))
	msg.Header.Set(HeaderDLQReason, reason)
	for name, from := range map[string]string{HeaderDLQMsgID: command.HeaderMsgID, HeaderDLQReplyTo: command.HeaderReplyTo, HeaderDLQContentType: command.HeaderContentType} {
		for _, v := range h.cmd.Header.ValuesFold(from) {
			msg.Header.Add(name, v)
		}
	}
	msg.Header.Set(command.HeaderMsgID, "dlq-"+seq) // a second worker's record of it is a duplicate
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.DeadLetters.PublishMsg(ctx, msg)
	return err
}

func (c *Consumer) reply(h delivery, log zerolog.Logger, r Reply) {
	if h.replyTo == "" {
		return
	}
	err := c.Conn.PublishMsg(&nats.Msg{Subject: h.replyTo, Header: r.Header(), Data: r.Body})
	if err != nil {
		log.Error().Err(err).Msg("reply")
	}
}
