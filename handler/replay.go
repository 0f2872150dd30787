package handler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/retry"
)

// ReplayRange picks stored commands to run through the applier again: a
// stream sequence range, optionally narrowed to a time window and one user.
type ReplayRange struct {
	FromSeq uint64    `json:"fromSeq"`
	ToSeq   uint64    `json:"toSeq"` // inclusive
	Since   time.Time `json:"since,omitzero"`
	Until   time.Time `json:"until,omitzero"`
	UserID  string    `json:"userId,omitempty"`
}

// ReplayReport says what a replay did.
type ReplayReport struct {
	FromSeq uint64 `json:"fromSeq"`
	ToSeq   uint64 `json:"toSeq"`
	// Read counts the commands in range that matched the filters.
	Read int `json:"read"`
	// Repeats changed nothing: they had an outcome, or the state was past
	// them already.
	Repeats int `json:"repeats"`
	// Applied and Refused had none (they had failed, or the store was
	// restored) and got a definitive answer now.
	Applied int `json:"applied"`
	Refused int `json:"refused"`
	// Failed were not applied: a fault of this machine outlasted
	// replayWait at the first of them, and the replay stopped there.
	Failed int `json:"failed"`
	// Partitions are the partitions the report covers: those of the
	// worker that answered.
	Partitions []int `json:"partitions,omitempty"`
}

// Add adds o's counts to r's.
func (r *ReplayReport) Add(o ReplayReport) {
	r.Read += o.Read
	r.Repeats += o.Repeats
	r.Applied += o.Applied
	r.Refused += o.Refused
	r.Failed += o.Failed
}

// count files one command's result.
func (r *ReplayReport) count(res command.Result) {
	switch {
	case res.Repeat || res.Skipped:
		r.Repeats++
	case res.Answer.Err != nil:
		r.Refused++
	default:
		r.Applied++
	}
}

func (r ReplayRange) matches(c *command.Command) bool {
	if r.UserID != "" && !strings.HasSuffix(c.Subject, "."+r.UserID) {
		return false
	}
	if !r.Since.IsZero() && c.Timestamp.Before(r.Since) {
		return false
	}
	if !r.Until.IsZero() && !c.Timestamp.Before(r.Until) {
		return false
	}
	return true
}

// replayWait is how a replay waits out a fault of this machine: as the
// consumer does, but for half a minute at most, since an operator waits
// for its report.
var replayWait = retry.Policy{First: 200 * time.Millisecond, Factor: 2, Max: 8 * time.Second, MaxElapsed: 30 * time.Second}

// Replay runs the stored commands of r on subjects filter (one partition's)
// through a again, in stream order, in batches of maxBatch, as far as the
// stream's leader holds them: passkeys.admin.replay. Each is judged as the
// first time (its token and changeDate at its stream timestamp); one that
// already has an outcome changes nothing. Nobody is replied to.
func Replay(ctx context.Context, reader *jsread.Reader, a *command.Applier, filter string, r ReplayRange, maxBatch int) (ReplayReport, error) {
	rep := ReplayReport{FromSeq: r.FromSeq, ToSeq: r.ToSeq}
	if r.FromSeq == 0 || r.ToSeq < r.FromSeq {
		return rep, nil
	}
	last, err := lastOf(ctx, reader, filter)
	if err != nil {
		return rep, fmt.Errorf("replay: %w", err)
	}
	next := readSource(reader, filter, r.FromSeq, min(last, r.ToSeq), maxBatch)
	for {
		batch, err := readBatch(ctx, next, maxBatch, r.matches)
		if err != nil {
			return rep, fmt.Errorf("replay: %w", err)
		}
		if len(batch) == 0 {
			return rep, nil
		}
		rep.Read += len(batch)
		done := 0
		err = a.ApplyInOrder(ctx, batch, command.InOrder{Wait: replayWait, Done: func(_ int, res command.Result) {
			done++
			rep.count(res)
		}})
		if errors.Is(err, command.ErrGaveUp) {
			rep.Failed = len(batch) - done
			a.Log.Error().Err(err).Int("failed", rep.Failed).Msg("replay stopped: a command could not be applied")
			return rep, nil
		}
		if err != nil {
			return rep, fmt.Errorf("replay: %w", err)
		}
	}
}

// CatchUp applies the partition's stored commands (filter) that follow
// applied, in stream order, up to the last one the stream's leader holds
// when it starts: what a worker does when it takes a partition over (from
// its own older store, or a snapshot), before it consumes. answer, when
// set, is given each command's result once its transaction committed
// (EarlyAnswers.Note: what the holder before left unanswered). A fault of
// this machine makes it wait and try again (policy wait), never skip.
// progress, when set, is called after each commit. It returns how many
// commands it applied and the last sequence applied.
func CatchUp(ctx context.Context, reader *jsread.Reader, a *command.Applier, filter string, applied uint64,
	maxBatch int, wait retry.Policy, progress func(), answer func(*command.Command, command.Result)) (int, uint64, error) {
	last, err := lastOf(ctx, reader, filter)
	if err != nil {
		return 0, applied, fmt.Errorf("catch-up: %w", err)
	}
	next := readSource(reader, filter, applied+1, last, maxBatch)
	n := 0
	for {
		batch, err := readBatch(ctx, next, maxBatch, nil)
		if err != nil {
			return n, applied, fmt.Errorf("catch-up: %w", err)
		}
		if len(batch) == 0 {
			return n, applied, nil
		}
		err = a.ApplyInOrder(ctx, batch, command.InOrder{Wait: wait, Done: func(i int, r command.Result) {
			n++
			applied = batch[i].StreamSeq
			if answer != nil {
				answer(batch[i], r)
			}
		}})
		if err != nil {
			return n, applied, err
		}
		if progress != nil {
			progress()
		}
	}
}

// readBatch takes up to max commands from next that keep says to keep (all
// with keep nil); none once next has no more.
func readBatch(ctx context.Context, next source, max int, keep func(*command.Command) bool) ([]*command.Command, error) {
	var batch []*command.Command
	for len(batch) < max {
		c, err := next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if keep == nil || keep(c) {
			batch = append(batch, c)
		}
	}
	return batch, nil
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

// source yields stored commands in stream order; io.EOF after the last.
type source func(ctx context.Context) (*command.Command, error)

// readSource yields the commands on filter from sequence from through
// through (a command the leader confirmed), read in chunks of chunk.
func readSource(reader *jsread.Reader, filter string, from, through uint64, chunk int) source {
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
		return CommandOf(m)
	}
}
