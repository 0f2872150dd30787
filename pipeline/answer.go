package pipeline

import (
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/traceprop"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/reply"
)

// replyToOf is where a command's reply goes: its one Reply-To, when that
// passes command.CheckReplyTo; "" for none.
func replyToOf(cmd *command.Command) string {
	if v := cmd.Header.ValuesFold(command.HeaderReplyTo); len(v) == 1 && command.CheckReplyTo(v) == nil {
		return v[0]
	}
	return ""
}

// wireOf is the reply a command's result makes. A command applied already
// (the store is past it) whose outcome is not kept is not applied again,
// and its requester is told so rather than left without an answer.
func wireOf(r command.Result) reply.Wire {
	if r.Skipped {
		return reply.Error(passkey.ErrOutcomeUnavailable)
	}
	return reply.Render(r.Answer)
}

// replyHeader is the header of a command's reply: the service error
// headers of wire, and the command's trace context (its caller's, as the
// stream stored it, so a replay answers with the same headers).
func replyHeader(cmd *command.Command, wire reply.Wire) nats.Header {
	hdr := wire.Header()
	if tr := cmd.Trace(); tr.Parent != "" {
		if hdr == nil {
			hdr = nats.Header{}
		}
		traceprop.Set(hdr, tr.Parent, tr.State)
	}
	return hdr
}

// AnswerRead replies to a command this worker applied from the stream, not
// from a delivery of its own: one the partition's consumer delivered to
// another worker (the holder before, whose deliveries in transit were lost
// when it let go or died; a worker that briefly pulled the same partition)
// and that nobody acknowledged yet. Its requester has its answer as soon as
// the command is applied here, rather than once its ack wait has run out
// and it comes back (10 s): what a takeover under load otherwise costs the
// commands the old holder was handed last. The delivery still comes back
// and is answered again from its stored outcome, byte for byte the same
// (a command's outcome does not depend on the worker that applies it), so
// a requester may get the same reply twice, never two different ones; that
// later answer is the guarded one (reply.Guard), so this one is a plain
// publish. It must be called only after the command's transaction
// committed. It reports whether a reply went out.
func AnswerRead(conn *nats.Conn, cmd *command.Command, r command.Result, log zerolog.Logger) bool {
	to := replyToOf(cmd)
	if conn == nil || to == "" {
		return false
	}
	wire := wireOf(r)
	if err := conn.PublishMsg(&nats.Msg{Subject: to, Header: replyHeader(cmd, wire), Data: wire.Body}); err != nil {
		log.Debug().Err(err).Uint64("stream_seq", cmd.StreamSeq).Msg("early reply to a command applied from the stream")
		return false
	}
	return true
}
