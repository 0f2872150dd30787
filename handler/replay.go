package handler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/passkeys/worker/command"
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

// Replay runs the stored commands of r through the partition again, in
// stream order, as far as the stream's leader holds them and the partition
// has applied:
// passkeys.admin.replay. Each is judged as the first time (its token and
// changeDate at its stream timestamp); one that already has an outcome
// changes nothing. Nobody is replied to.
func (p *Partition) Replay(ctx context.Context, r ReplayRange) (ReplayReport, error) {
	rep := ReplayReport{FromSeq: r.FromSeq, ToSeq: r.ToSeq}
	if r.FromSeq == 0 || r.ToSeq < r.FromSeq {
		return rep, nil
	}
	last, err := p.Last(ctx)
	if err != nil {
		return rep, fmt.Errorf("replay: %w", err)
	}
	keep := func(c *command.Command) bool {
		if !c.Control && r.matches(c) { // the control entries are kept already
			rep.Read++
			return true
		}
		return false
	}
	// Never past what the partition applied: a replay of one user's
	// commands must not carry the applied sequence past the others'.
	_, err = p.ApplyRange(ctx, Range{From: r.FromSeq, Through: min(last, r.ToSeq, p.Applied()), Keep: keep, Wait: replayWait,
		Done: func(_ *command.Command, res command.Result) { rep.count(res) }})
	if errors.Is(err, command.ErrGaveUp) {
		rep.Failed = rep.Read - rep.Repeats - rep.Applied - rep.Refused
		p.Applier.Log.Error().Err(err).Int("failed", rep.Failed).Msg("replay stopped: a command could not be applied")
		return rep, nil
	}
	if err != nil {
		return rep, fmt.Errorf("replay: %w", err)
	}
	return rep, nil
}
