package command

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/passkeys/worker/internal/retry"
)

// InOrder is how CommitInOrder waits out faults and whom it tells.
type InOrder struct {
	// Wait is the schedule of the tries after a fault. With MaxElapsed set,
	// CommitInOrder gives up (ErrGaveUp) once a fault has lasted that long;
	// without, it waits as long as it takes.
	Wait retry.Policy
	// Done (may be nil) gets each command's result once its transaction
	// committed, in stream order.
	Done func(i int, r Result)
	// Committed (may be nil) is told of each transaction tried: how many
	// commands, how long it took, and its error.
	Committed func(n int, took time.Duration, err error)
	// Pausing (may be nil) is called before each pause with the index of
	// the first command not applied yet.
	Pausing func(from int)
}

// ErrGaveUp is CommitInOrder's error when a fault outlasted its policy's
// MaxElapsed: the command it stopped at, and every later one, are not
// applied.
var ErrGaveUp = errors.New("gave up waiting for a fault of this machine to pass")

// CommitInOrder commits a checked batch in stream order, the one way the
// worker applies commands (consumer, gap filling, catch-up, replay,
// upgrade): when the store fails, or a command cannot be applied now
// (commitFrom stops at it), the rest is tried again after the policy's next
// pause, and again, never skipped, so no later command overtakes it. It
// returns nil once every command committed; ctx's error when ctx ends
// first; at once an error wrapping ErrFenced when the Fence says the
// partition is not held; ErrGaveUp as InOrder.Wait says.
func (a *Applier) CommitInOrder(ctx context.Context, c *Checked, o InOrder) error {
	var faultSince time.Time
	for start, attempt := 0, 1; start < len(c.checked); attempt++ {
		t := time.Now()
		results, err := a.commitFrom(c, start)
		if errors.Is(err, ErrFenced) {
			a.Log.Warn().Err(err).Int("batch", len(c.checked)-start).Msg("not applied: the partition's lease is not held; the commands come back to its holder")
			return err
		}
		if o.Committed != nil {
			o.Committed(len(c.checked)-start, time.Since(t), err)
		}
		if err == nil {
			next := len(c.checked)
			for i := start; i < len(c.checked); i++ {
				if results[i].Transient != nil {
					next, err = i, results[i].Transient
					break
				}
				if o.Done != nil {
					o.Done(i, results[i])
				}
			}
			if start = next; start == len(c.checked) {
				return nil
			}
		}
		if faultSince.IsZero() {
			faultSince = t
		}
		if o.Wait.MaxElapsed > 0 && time.Since(faultSince) > o.Wait.MaxElapsed {
			return fmt.Errorf("%w (%s at stream sequence %d): %w", ErrGaveUp, o.Wait.MaxElapsed, c.checked[start].cmd.StreamSeq, err)
		}
		delay := o.Wait.After(uint64(attempt))
		a.Log.Error().Err(err).Int("batch", len(c.checked)-start).Int("attempt", attempt).Dur("retry_in", delay).
			Uint64("stream_seq", c.checked[start].cmd.StreamSeq).
			Msg("could not apply the partition's next command (a fault of this worker's machine); the partition waits and tries again")
		if o.Pausing != nil {
			o.Pausing(start)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
	return nil
}

// ApplyInOrder checks cmds (Check) and commits them in order
// (CommitInOrder), with CommitInOrder's errors.
func (a *Applier) ApplyInOrder(ctx context.Context, cmds []*Command, o InOrder) error {
	return a.CommitInOrder(ctx, a.Check(cmds), o)
}
