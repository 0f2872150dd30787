package handler

import (
	"context"
	"errors"
	"time"

	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/retry"
)

// commitInOrder commits a checked batch in order, waiting out faults of
// the machine: when the store fails, or a command cannot be applied now
// (command.Applier.CommitFrom stops at it), it is tried again after wait's
// next pause, and again, never skipped, so no later command overtakes it.
// done gets each command's result once its transaction committed, in
// order; committed (may be nil) is told of each commit that succeeded;
// pausing (may be nil) is called before each pause with the index of the
// first command not applied yet. It returns false when ctx ends first, or
// at once when the Applier's fence says the partition is not held.
// The consumer, the filling of gaps and the catch-up all apply this way.
func commitInOrder(ctx context.Context, a *command.Applier, checked *command.Checked, wait retry.Policy, log zerolog.Logger,
	committed func(n int, took time.Duration, err error), done func(i int, r command.Result), pausing func(from int)) bool {
	cmds := checked.Commands()
	for start, attempt := 0, 1; start < len(cmds); attempt++ {
		t := time.Now()
		results, err := a.CommitFrom(checked, start)
		if errors.Is(err, command.ErrFenced) {
			log.Warn().Err(err).Int("batch", len(cmds)-start).Msg("not applied: the partition's lease is not held; the commands come back to its holder")
			return false
		}
		if committed != nil {
			committed(len(cmds)-start, time.Since(t), err)
		}
		if err == nil {
			next := len(cmds)
			for i := start; i < len(cmds); i++ {
				if results[i].Transient != nil {
					next, err = i, results[i].Transient
					break
				}
				done(i, results[i])
			}
			if start = next; start == len(cmds) {
				return true
			}
		}
		delay := wait.After(uint64(attempt))
		log.Error().Err(err).Int("batch", len(cmds)-start).Int("attempt", attempt).Dur("retry_in", delay).
			Uint64("stream_seq", cmds[start].StreamSeq).
			Msg("could not apply the partition's next command (a fault of this worker's machine); the partition waits and tries again")
		if pausing != nil {
			pausing(start)
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
	}
	return true
}
