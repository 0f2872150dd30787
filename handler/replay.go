package handler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/retry"
)

// Replay runs the stored commands in r on subjects filter (one
// partition's) through a, read from stream PASSKEYS from r.FromSeq on
// (command.Replay says what is done with them): passkeys.admin.replay.
func Replay(ctx context.Context, reader *jsread.Reader, a *command.Applier, filter string, r command.ReplayRange, maxBatch int,
	log zerolog.Logger, progress func(command.ReplayReport, uint64)) (command.ReplayReport, error) {
	if r.FromSeq == 0 || r.ToSeq < r.FromSeq {
		return command.ReplayReport{FromSeq: r.FromSeq, ToSeq: r.ToSeq}, nil
	}
	last, err := lastOf(ctx, reader, filter)
	if err != nil {
		return command.ReplayReport{}, fmt.Errorf("replay: %w", err)
	}
	return command.Replay(ctx, a, readSource(reader, filter, r.FromSeq, last, maxBatch), r, maxBatch, log, progress)
}

// lastOf is the sequence of the last command on filter the stream's leader
// holds; 0 when there is none.
func lastOf(ctx context.Context, reader *jsread.Reader, filter string) (uint64, error) {
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := reader.Last(gctx, filter)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return m.Sequence, nil
}

// readSource yields the commands on filter from sequence from through
// through (a command the leader confirmed), read in chunks of chunk; io.EOF
// after the last.
func readSource(reader *jsread.Reader, filter string, from, through uint64, chunk int) command.Source {
	var buf []*jetstream.RawStreamMsg
	return func(ctx context.Context) (*command.Command, error) {
		if len(buf) == 0 {
			if from > through {
				return nil, io.EOF
			}
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			msgs, err := reader.Read(rctx, filter, from, through, chunk)
			cancel()
			if err != nil {
				return nil, err
			}
			if len(msgs) == 0 {
				return nil, io.EOF
			}
			buf, from = msgs, msgs[len(msgs)-1].Sequence+1
		}
		m := buf[0]
		buf = buf[1:]
		return rawCommand(m)
	}
}

// CatchUp applies the partition's stored commands (filter) that follow
// applied, in stream order, up to the last one the stream's leader holds
// when it starts: what a worker does when it takes a partition over (from
// its own older store, or a snapshot), before it consumes. Nobody is
// replied to: the commands still unacknowledged come back through the
// consumer and get their stored outcomes. A fault of this machine makes it
// wait and try again (policy wait), never skip. progress, when set, is
// called after each commit. The report's ToSeq is the last sequence
// applied.
func CatchUp(ctx context.Context, reader *jsread.Reader, a *command.Applier, filter string, applied uint64,
	maxBatch int, wait retry.Policy, log zerolog.Logger, progress func()) (command.ReplayReport, error) {
	rep := command.ReplayReport{FromSeq: applied + 1, ToSeq: applied}
	last, err := lastOf(ctx, reader, filter)
	if err != nil {
		return rep, fmt.Errorf("catch-up: %w", err)
	}
	next := readSource(reader, filter, applied+1, last, maxBatch)
	for {
		var cmds []*command.Command
		for len(cmds) < maxBatch {
			cmd, err := next(ctx)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return rep, fmt.Errorf("catch-up: %w", err)
			}
			cmds = append(cmds, cmd)
		}
		if len(cmds) == 0 {
			return rep, nil
		}
		checked, err := a.Check(ctx, cmds)
		if err != nil {
			return rep, err
		}
		ok := commitInOrder(ctx, a, checked, wait, log, nil, func(i int, _ command.Result) {
			rep.Read++
			rep.ToSeq = cmds[i].StreamSeq
		}, nil)
		if !ok {
			return rep, ctx.Err()
		}
		if progress != nil {
			progress()
		}
	}
}
