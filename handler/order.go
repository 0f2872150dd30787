package handler

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/partition"
)

// orderCheck keeps a partition's state a prefix of its stream: a command
// is applied only once every earlier command of the partition is. The pin
// on a partition's consumer is no guarantee of that: for moments two
// workers may both pull from it, and the commands a crashed worker held
// come back after the ack wait, behind newer ones. So before the processor
// applies a command past what the partition has applied, the check makes
// sure that command is the next one of the partition in the stream, and if
// it is not, has what lies between applied first, read from the stream in
// order (Partition.ApplyRange). What comes back later is then a repeat (its
// stored outcome is its answer).
//
// The check costs nothing in the usual case: the consumer's first
// deliveries come in stream order, so a command delivered for the first time
// right after (consumer sequence + 1) the partition's last applied command
// follows it in the stream. Otherwise one read of the stream (the next
// message of the partition after the applied one) settles it.
type orderCheck struct {
	prevDeliver uint64 // consumer sequence of the last command seen
	prevFirst   uint64 // its stream sequence when it was a first delivery at the applied one, else 0
}

// fill applies, before the deliveries hand, the partition's commands that
// the stream holds ahead of hand's first new command and this worker has
// not applied, answering each at once (answerRead). A failed read waits
// and is tried again. It returns the apply's error, or ctx's when the
// worker stops first.
func (c *Processor) fill(ctx context.Context, hand []delivery) error {
	g := &c.order
	front, prevD, prevFirst := c.Partition.Applied(), g.prevDeliver, g.prevFirst
	inHand := map[uint64]bool{} // the batch's commands before h: answered by the batch
	for _, h := range hand {
		s, d := h.meta.Sequence.Stream, h.meta.Sequence.Consumer
		first := h.meta.NumDelivered == 1
		if s > front {
			proven := first && prevFirst != 0 && prevFirst == front && d == prevD+1
			if !proven {
				c.Log.Debug().Uint64("applied_seq", front).Uint64("stream_seq", s).Uint64("deliver_seq", d).
					Uint64("num_delivered", h.meta.NumDelivered).Msg("order check: reading the stream before the command")
				// From what the partition has applied, not from the
				// batch's last command: those of the batch before this one
				// are not committed yet, and a command read past them
				// would make them look applied. Those of them the range
				// applies are answered once, by the batch (as repeats).
				if err := c.applyBetween(ctx, c.Partition.Applied(), s, inHand); err != nil {
					return err
				}
			}
			front = s
		}
		inHand[s] = true
		prevD = d
		prevFirst = 0
		if first && s == front {
			prevFirst = s
		}
	}
	g.prevDeliver, g.prevFirst = prevD, prevFirst
	return nil
}

// applyBetween applies the partition's commands after front and before
// until (a command the consumer delivered, so the stream's leader holds
// everything before it), and answers those with a Reply-To but the ones
// in hand (the batch answers those).
func (c *Processor) applyBetween(ctx context.Context, front, until uint64, inHand map[uint64]bool) error {
	answer := func(cmd *command.Command, r command.Result) {
		if !inHand[cmd.StreamSeq] {
			c.answerRead(cmd, r)
		}
	}
	for attempt := uint64(1); ; attempt++ {
		n, err := c.Partition.ApplyRange(ctx, Range{From: front + 1, Through: until - 1, Wait: c.Wait,
			Committed: c.Committed, Done: answer})
		if n > 0 {
			c.Log.Warn().Uint64("applied_seq", front).Uint64("next_delivered", until).Int("commands", n).
				Msg("commands of the partition were not delivered here (another worker took them, or they come back late): applied them from the stream first, in order, and answered those with a Reply-To")
		}
		if err == nil || ctx.Err() != nil || errors.Is(err, command.ErrFenced) {
			return err
		}
		delay := c.Wait.After(attempt)
		c.Log.Error().Err(err).Uint64("applied_seq", front).Dur("retry_in", delay).
			Msg("could not read the partition's commands ahead of a delivered one; the partition waits and tries again")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		front = max(front, c.Partition.Applied())
	}
}

// commandOf is the command a partition's stored message holds, under the
// subject its publisher used, or its control entry: both ways a command comes out of a
// partition (a consumer's delivery, a read) end here.
func commandOf(stored string, h nats.Header, data []byte, seq uint64, at time.Time) (*command.Command, error) {
	if _, ok := partition.ControlOf(stored); ok {
		return &command.Command{Subject: stored, Body: data, StreamSeq: seq, Timestamp: at, Control: true}, nil
	}
	_, subject, err := partition.Original(stored)
	if err != nil {
		return nil, err
	}
	return &command.Command{Subject: subject, Header: command.Header(h), Body: data, StreamSeq: seq, Timestamp: at}, nil
}
