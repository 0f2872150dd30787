package handler

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/partition"
)

// OrderGuard keeps a partition's state a prefix of its stream: a command is
// applied only once every earlier command of the partition is. The pin on a
// partition's consumer is no guarantee of that: for moments two workers may
// both pull from it, and the commands a crashed worker held come back after
// the ack wait, behind newer ones. So before the processor applies a
// command past what the store has applied, the guard makes sure that
// command is the next one of the partition in the stream, and if it is not,
// has what lies between applied first, read from the stream in order. What
// comes back later is then a repeat (its stored outcome is its answer).
//
// The check costs nothing in the usual case: the consumer's first
// deliveries come in stream order, so a command delivered for the first time
// right after (consumer sequence + 1) the partition's last applied command
// follows it in the stream. Otherwise one read of the stream (the next
// message of the partition after the applied one) settles it.
type OrderGuard struct {
	// Reader reads the partition's commands from stream PASSKEYS.
	Reader *jsread.Reader
	// Filter is the partition's stored subjects (partition.Filter).
	Filter string
	// Applied is the last stream sequence the partition's store has
	// applied (its AppliedSeq at start); the guard advances it.
	Applied uint64

	prevDeliver uint64 // consumer sequence of the last command seen
	prevFirst   uint64 // its stream sequence when it was a first delivery at Applied, else 0
}

// applyFunc applies commands in stream order, waiting out faults
// (command.Applier.CommitInOrder), and reports each it applied to done.
type applyFunc func(ctx context.Context, cmds []*command.Command, done func(*command.Command)) error

// fill has apply apply, before the deliveries hand, the partition's
// commands that the stream holds ahead of hand's first new command and
// this worker has not applied. A failed read waits (wait) and is tried
// again. It returns apply's error, or ctx's when the worker stops first.
func (g *OrderGuard) fill(ctx context.Context, hand []delivery, apply applyFunc, wait retry.Policy, log zerolog.Logger) error {
	front, prevD, prevFirst := g.Applied, g.prevDeliver, g.prevFirst
	for _, h := range hand {
		s, d := h.meta.Sequence.Stream, h.meta.Sequence.Consumer
		first := h.meta.NumDelivered == 1
		if s > front {
			proven := first && prevFirst != 0 && prevFirst == front && d == prevD+1
			if !proven {
				log.Debug().Uint64("applied_seq", front).Uint64("stream_seq", s).Uint64("deliver_seq", d).
					Uint64("num_delivered", h.meta.NumDelivered).Msg("order check: reading the stream before the command")
				if err := g.applyBetween(ctx, front, s, apply, wait, log); err != nil {
					return err
				}
			}
			front = s
		}
		prevD = d
		prevFirst = 0
		if first && s == front {
			prevFirst = s
		}
	}
	g.prevDeliver, g.prevFirst = prevD, prevFirst
	return nil
}

// committed advances the guard past a command that was applied.
func (g *OrderGuard) committed(seq uint64) { g.Applied = max(g.Applied, seq) }

// applyBetween reads the partition's commands after front and before until
// from the stream and has apply apply them.
func (g *OrderGuard) applyBetween(ctx context.Context, front, until uint64, apply applyFunc, wait retry.Policy, log zerolog.Logger) error {
	for attempt := uint64(1); ; attempt++ {
		cmds, err := g.readBetween(ctx, front, until)
		if err != nil {
			delay := wait.After(attempt)
			log.Error().Err(err).Uint64("applied_seq", front).Dur("retry_in", delay).
				Msg("could not read the partition's commands ahead of a delivered one; the partition waits and tries again")
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(delay):
			}
			continue
		}
		if len(cmds) == 0 {
			return nil
		}
		log.Warn().Uint64("applied_seq", front).Uint64("next_delivered", until).Int("commands", len(cmds)).
			Msg("commands of the partition were not delivered here (another worker took them, or they come back late): applying them from the stream first, in order, and answering those with a Reply-To")
		if err := apply(ctx, cmds, func(c *command.Command) {
			front = max(front, c.StreamSeq)
			g.committed(front)
		}); err != nil {
			return err
		}
		attempt = 0 // there may be more than one read brought
	}
}

// readBetween reads up to 256 commands of the partition after front and
// before until (a command the consumer delivered, so the stream's leader
// holds everything before it), in stream order.
func (g *OrderGuard) readBetween(ctx context.Context, front, until uint64) ([]*command.Command, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	msgs, err := g.Reader.Read(rctx, g.Filter, front+1, until, 256)
	if err != nil {
		return nil, err
	}
	var cmds []*command.Command
	for _, m := range msgs {
		if m.Sequence >= until {
			break
		}
		cmd, err := CommandOf(m)
		if err != nil {
			return nil, err
		}
		cmds = append(cmds, cmd)
	}
	return cmds, nil
}

// CommandOf is the command a stream message holds, under the subject its
// publisher used (a stored one of the version before partitions is read
// as it is): every way a command comes out of the stream (a consumer's
// delivery, a read, the upgrade's) ends here.
func CommandOf(m *jetstream.RawStreamMsg) (*command.Command, error) {
	return commandOf(m.Subject, m.Header, m.Data, m.Sequence, m.Time)
}

func commandOf(stored string, h nats.Header, data []byte, seq uint64, at time.Time) (*command.Command, error) {
	_, subject, err := partition.Original(stored)
	if err != nil {
		return nil, err
	}
	return &command.Command{Subject: subject, Header: command.Header(h), Body: data, StreamSeq: seq, Timestamp: at}, nil
}
