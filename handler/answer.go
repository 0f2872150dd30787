package handler

import (
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/traceprop"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/reply"
)

// wireOf is the reply a command's result makes. A command applied already
// (the store is past it) whose outcome is not kept is not applied again,
// and its requester is told so rather than left without an answer.
func wireOf(r command.Result) reply.Wire {
	if r.Skipped {
		return reply.Error(passkey.ErrOutcomeUnavailable)
	}
	return reply.Render(r.Answer)
}

// replyMsg is the reply to cmd, to subject to, of wire: its body, the
// service error headers, and the command's trace context (its caller's, as
// the stream stored it, so a replay answers with the same headers).
func replyMsg(to string, cmd *command.Command, wire reply.Wire) *nats.Msg {
	hdr := wire.Header()
	if tr := cmd.Trace(); tr.Parent != "" {
		if hdr == nil {
			hdr = nats.Header{}
		}
		traceprop.Set(hdr, tr.Parent, tr.State)
	}
	return &nats.Msg{Subject: to, Header: hdr, Data: wire.Body}
}

// EarlyAnswers are the answers a takeover owes the commands the holder
// before was handed and did not answer: its deliveries lost on their way
// to it when it let go, or those it died with. Unacknowledged, they come
// back after their ack wait (10 s); the new holder's catch-up applies them
// first, and answers them then, rather than leave their requesters waiting.
//
// The consumer does not say which commands are unacknowledged, only how
// many (NumAckPending) and where (above AckFloor, at or below Delivered).
// Those lost or held by a dead holder are the last delivered, so the
// catch-up answers the last NumAckPending commands of that range. It may
// so answer a few acknowledged ones among them (those above a command the
// holder before was still waiting on), never more than NumAckPending in
// all. It exists for the worker-kill fault: without it, what a dead holder
// held waits out its ack wait (10 s) or the client's next attempt.
type EarlyAnswers struct {
	floor, delivered uint64
	max              int
	owed             []early // the range's last max commands, oldest first
}

type early struct {
	seq uint64
	msg *nats.Msg
}

// NewEarlyAnswers owes answers to the commands info (the partition
// consumer's state just before the catch-up) says were delivered and not
// all acknowledged.
func NewEarlyAnswers(info *jetstream.ConsumerInfo) *EarlyAnswers {
	if info == nil || info.NumAckPending <= 0 {
		return &EarlyAnswers{}
	}
	return &EarlyAnswers{floor: info.AckFloor.Stream, delivered: info.Delivered.Stream, max: info.NumAckPending}
}

// Note is told of each command the catch-up applied, with its result,
// after its transaction committed, in stream order (CatchUp's answer).
func (e *EarlyAnswers) Note(cmd *command.Command, r command.Result) {
	if e.max == 0 || cmd.StreamSeq <= e.floor || cmd.StreamSeq > e.delivered {
		return
	}
	a := early{seq: cmd.StreamSeq} // one without a Reply-To counts, and gets nothing
	if r.ReplyTo != "" {
		a.msg = replyMsg(r.ReplyTo, cmd, wireOf(r))
	}
	if e.owed = append(e.owed, a); len(e.owed) > e.max {
		e.owed = e.owed[1:] // append copies the last max when it grows: O(max) kept
	}
}

// Send publishes the answers owed, plainly, and returns how many went out.
// The partition is served by then (its reads answered, its events
// published), so a requester that reads right after its answer finds the
// partition there. The commands' deliveries, when they come back, are
// answered again, the same bytes.
//
// held is the partition's lease check, made before each answer: a worker
// that paused and lost the partition meanwhile stops (what it would send
// is what any holder sends, but a worker that lost its partition answers
// nothing more). counted, when set, is told of each answer
// (Observer.AnsweredEarly).
func (e *EarlyAnswers) Send(conn *nats.Conn, held func() error, counted func(), log zerolog.Logger) int {
	sent := 0
	for _, a := range e.owed {
		if a.msg == nil {
			continue
		}
		if err := held(); err != nil {
			log.Warn().Err(err).Msg("stopped answering the commands the holder before left unanswered: the partition is not held")
			break
		}
		if err := conn.PublishMsg(a.msg); err != nil {
			log.Warn().Err(err).Uint64("stream_seq", a.seq).Msg("could not answer a command the holder before left unanswered; its delivery will be")
			continue
		}
		sent++
		if counted != nil {
			counted()
		}
	}
	if sent > 0 {
		log.Warn().Int("answered", sent).Uint64("ack_floor", e.floor).Uint64("delivered", e.delivered).
			Msg("answered the commands the holder before was handed and did not acknowledge")
	}
	e.owed = nil
	return sent
}

// answerRead replies to a command this processor applied from the stream,
// not from a delivery of its own (the order check's fill: the consumer
// delivered it to another worker, the holder before or one that briefly
// pulled the same partition, and nobody acknowledged it yet), as soon as
// its transaction committed, rather than once its ack wait has run out and
// it comes back. Its outcome does not depend on the worker that applies it,
// so when its delivery comes back here it is answered again with the same
// bytes.
func (c *Processor) answerRead(cmd *command.Command, r command.Result) {
	if c.Conn == nil || r.ReplyTo == "" || c.NoEarlyAnswer {
		return
	}
	if err := c.Conn.PublishMsg(replyMsg(r.ReplyTo, cmd, wireOf(r))); err != nil {
		c.Log.Warn().Err(err).Uint64("stream_seq", cmd.StreamSeq).Msg("could not answer a command applied from the stream; its delivery will be")
		return
	}
	if c.Observer.AnsweredEarly != nil {
		c.Observer.AnsweredEarly()
	}
}
