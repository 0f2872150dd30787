package handler

import (
	"context"
	"errors"
	"fmt"
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
	// StoreRetry is how long the partition waits before it tries a command
	// that could not be applied again (retry.Wait): as long as it takes.
	StoreRetry retry.Policy
	// PriorityGroup is the group the consumer is pulled with, when it has
	// priority groups (topology.PriorityGroup).
	PriorityGroup string
	// Order, when set, makes sure the partition's commands are applied in
	// stream order with none left out, even when another worker took some
	// of them or the server redelivers late (see OrderGuard).
	Order *OrderGuard
	// Observer, when set, is told what happens: metrics, and the
	// micro service's STATS (AnswerStats). Observers tells several.
	Observer Observer
	// Committed, when set, is called after each batch that committed: the
	// event publisher's Wake.
	Committed func()
	// Replies, when set, sends each reply and acknowledges its command
	// only once the requester was there to take it (ReplyGuard); else a
	// reply is published and its command acknowledged at once.
	Replies *ReplyGuard
}

// Observer is told what the consumer does; metrics.Metrics is one.
type Observer interface {
	// Batch reports one attempt at a batch transaction.
	Batch(size int, took time.Duration, err error)
	// Answered reports a command's answer (code 0 and no text: success),
	// with the time the stream stored it.
	Answered(op passkey.Op, code passkey.Code, errorText string, storedAt time.Time)
	Redelivered()
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
	opts := []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(2 * c.MaxBatch)}
	if c.PriorityGroup != "" {
		opts = append(opts, jetstream.PullPriorityGroup(c.PriorityGroup))
	}
	iter, err := cons.Messages(opts...)
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
		if b, ok := c.checkBatch(ctx, batch); ok {
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
func (c *Consumer) checkBatch(ctx context.Context, msgs []jetstream.Msg) (checkedBatch, bool) {
	hand := make([]delivery, 0, len(msgs))
	cmds := make([]*command.Command, 0, len(msgs))
	for _, m := range msgs {
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
		h := delivery{msg: m, meta: meta, cmd: cmd}
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
			// Redeliveries mean a lost ack, or an ack wait that ran
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
	checked, err := c.Applier.Check(ctx, cmds)
	if err != nil {
		// Stopping before the keys of their time were known: unacknowledged,
		// they come back.
		return checkedBatch{}, false
	}
	return checkedBatch{hand: hand, checked: checked}, true
}

// commitBatch applies a checked batch in stream order: first whatever the
// partition's stream holds before it that this worker has not applied
// (fillGap), then the batch itself, each command replied to and
// acknowledged only after its transaction committed. A fault of this machine
// (the store fails, a record is damaged) makes the partition wait and try
// again: nothing is nacked or given up, so no later command overtakes one
// that is not applied. Only a stopping worker leaves a batch unfinished: its
// commands stay unacknowledged and come back.
func (c *Consumer) commitBatch(ctx context.Context, b checkedBatch) {
	if c.Order != nil {
		if !c.fillGap(ctx, b) {
			return
		}
	}
	ok := commitInOrder(ctx, c.Applier, b.checked, c.StoreRetry, c.Log,
		func(n int, took time.Duration, err error) {
			c.Observer.Batch(n, took, err)
			if err == nil && c.Committed != nil {
				c.Committed()
			}
		},
		func(i int, r command.Result) {
			c.finish(b.hand[i], r)
			if c.Order != nil {
				c.Order.committed(b.hand[i : i+1])
			}
		},
		func(from int) {
			// Kept in progress: the server does not redeliver them past
			// the one that waits.
			for _, h := range b.hand[from:] {
				_ = h.msg.InProgress()
			}
		})
	if !ok {
		c.Log.Warn().Msg("stopping with commands not applied; they stay unacknowledged and come back")
	}
}

// finish replies to and acknowledges one message, after its transaction
// committed.
func (c *Consumer) finish(h delivery, r command.Result) {
	log := h.log.With().Str("user_id", r.UserID).Logger()
	// Rendered after the commit: no reply body is built under the store's
	// write lock.
	var reply Reply
	if r.Skipped {
		// Applied already (the store is past it) yet no outcome is kept for
		// it: it is not applied again, and the requester is told so rather
		// than left without an answer.
		log.Error().Msg("command applied already but its outcome is not kept; answered OUTCOME-UNAVAILABLE")
		reply = ErrorReply(passkey.ErrOutcomeUnavailable)
	} else {
		reply = Render(r.Answer)
	}
	ev := log.Info().Str("op", string(r.Op)).Bool("repeat", r.Repeat)
	if reply.IsError() {
		ev = ev.Str("error_code", reply.ErrorCode).Str("error", reply.ErrorText)
	}
	ev.Msg("command processed")
	c.Observer.Answered(r.Op, reply.Code, reply.ErrorText, h.meta.Timestamp)
	if !r.Repeat && !r.Skipped && r.Answer.Err == nil {
		c.Observer.Changed()
	}
	if h.replyTo == "" {
		if err := h.msg.Ack(); err != nil {
			log.Error().Err(err).Msg("ack")
		}
		return
	}
	msg := &nats.Msg{Subject: h.replyTo, Header: reply.Header(), Data: reply.Body}
	if c.Replies == nil {
		if err := c.Conn.PublishMsg(msg); err != nil {
			log.Error().Err(err).Msg("reply")
		}
		if err := h.msg.Ack(); err != nil {
			log.Error().Err(err).Msg("ack")
		}
		return
	}
	c.Replies.Send(msg, h.msg, log)
}
