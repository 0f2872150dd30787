package handler

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/partition"
)

// Partition is one partition of the command stream applied to its store:
// the one owner of its applied sequence, of the reader of its commands and
// of its Applier (the store, the keys, and the lease as its fence). Every
// way a command is applied goes through it: a Processor's deliveries, and
// ApplyRange for the order check, a takeover's catch-up and an operator's
// replay.
type Partition struct {
	ID      int
	Applier *command.Applier
	// Reader reads stream PASSKEYS.
	Reader *jsread.Reader
	// MaxBatch bounds the commands applied in one transaction.
	MaxBatch int

	applied atomic.Uint64
}

// NewPartition is partition id over a's store, applied as far as the store
// says.
func NewPartition(id int, a *command.Applier, reader *jsread.Reader, maxBatch int) (*Partition, error) {
	applied, err := a.Store.AppliedSeq()
	if err != nil {
		return nil, err
	}
	p := &Partition{ID: id, Applier: a, Reader: reader, MaxBatch: max(maxBatch, 1)}
	p.applied.Store(applied)
	return p, nil
}

// Applied is the last stream sequence the partition's store has applied.
func (p *Partition) Applied() uint64 { return p.applied.Load() }

// advance notes that the command at seq was applied.
func (p *Partition) advance(seq uint64) {
	for cur := p.applied.Load(); seq > cur && !p.applied.CompareAndSwap(cur, seq); cur = p.applied.Load() {
	}
}

// Range is a stretch of the partition's stored commands for ApplyRange,
// and whom it tells.
type Range struct {
	// From and Through are stream sequences, both included.
	From, Through uint64
	// Keep, when set, picks the commands to apply (an operator's replay
	// of one user, or of a time window).
	Keep func(*command.Command) bool
	// Wait is how a fault of this machine is waited out
	// (command.InOrder.Wait).
	Wait retry.Policy
	// Done, when set, gets each command's result once its transaction
	// committed, in stream order.
	Done func(*command.Command, command.Result)
	// Committed, when set, is called after each transaction committed.
	Committed func()
}

// ApplyRange reads the partition's commands of r from the stream, as far
// as the stream's leader holds them, and applies them in stream order, a
// read's worth to a transaction. It returns how many commands it applied
// (control entries aside), and the
// first error: a read's, or CommitInOrder's (a fence, ctx, ErrGaveUp).
func (p *Partition) ApplyRange(ctx context.Context, r Range) (int, error) {
	n := 0
	for from := r.From; from <= r.Through; {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		msgs, err := p.Reader.Read(rctx, partition.Filter(p.ID), from, r.Through, p.MaxBatch)
		cancel()
		if err != nil {
			return n, fmt.Errorf("read partition %d's commands from %d: %w", p.ID, from, err)
		}
		if len(msgs) == 0 {
			return n, nil
		}
		from = msgs[len(msgs)-1].Sequence + 1
		batch := make([]*command.Command, 0, len(msgs))
		for _, m := range msgs {
			cmd, err := commandOf(m.Subject, m.Header, m.Data, m.Sequence, m.Time)
			if err != nil {
				return n, err
			}
			if r.Keep == nil || r.Keep(cmd) {
				batch = append(batch, cmd)
			}
		}
		if len(batch) == 0 {
			continue
		}
		err = p.Applier.ApplyInOrder(ctx, batch, command.InOrder{Wait: r.Wait,
			Committed: func(_ int, _ time.Duration, err error) {
				if err == nil && r.Committed != nil {
					r.Committed()
				}
			},
			Done: func(i int, res command.Result) {
				if !res.Control {
					n++
				}
				p.advance(batch[i].StreamSeq)
				if r.Done != nil {
					r.Done(batch[i], res)
				}
			}})
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Last is the sequence of the partition's last command the stream's
// leader holds; 0 when there is none.
func (p *Partition) Last(ctx context.Context) (uint64, error) {
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := p.Reader.Last(gctx, partition.Filter(p.ID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return m.Sequence, nil
}

// CatchUp applies the partition's stored commands after what it applied,
// up to the last one the stream's leader holds when it starts: what a
// worker does when it takes a partition over (from its own older store, or
// a snapshot), before it consumes. answer, when set, gets each command's
// result once its transaction committed (EarlyAnswers.Note: what the
// holder before left unanswered); progress, when set, is called after each
// commit. A fault of this machine makes it wait and try again (policy
// wait), never skip. It returns how many commands it applied.
func (p *Partition) CatchUp(ctx context.Context, wait retry.Policy, progress func(), answer func(*command.Command, command.Result)) (int, error) {
	last, err := p.Last(ctx)
	if err != nil {
		return 0, fmt.Errorf("catch-up: %w", err)
	}
	n, err := p.ApplyRange(ctx, Range{From: p.Applied() + 1, Through: last, Wait: wait, Done: answer, Committed: progress})
	if err != nil {
		return n, fmt.Errorf("catch-up: %w", err)
	}
	return n, nil
}
