package command

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/rs/zerolog"

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
	// Repeats already had an outcome: they changed nothing.
	Repeats int `json:"repeats"`
	// Applied and Refused had none (they had failed, or the store was
	// restored) and got a definitive answer now.
	Applied int `json:"applied"`
	Refused int `json:"refused"`
	// Failed failed again and stay unapplied.
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

// Source yields stored commands in stream order, from the range's first
// sequence on; io.EOF when the stream has no more.
type Source func(ctx context.Context) (*Command, error)

// Replay runs the commands next yields for r through a, in stream order, in
// batches of maxBatch. Each is judged as the first time (its token and
// changeDate at its stream timestamp); one that already has an outcome
// changes nothing. Nobody is replied to. progress, when set, is called after
// each batch with the report so far and the last sequence read.
func Replay(ctx context.Context, a *Applier, next Source, r ReplayRange, maxBatch int,
	log zerolog.Logger, progress func(ReplayReport, uint64)) (ReplayReport, error) {
	rep := ReplayReport{FromSeq: r.FromSeq, ToSeq: r.ToSeq}
	if r.FromSeq == 0 || r.ToSeq < r.FromSeq {
		return rep, nil
	}
	batch := make([]*Command, 0, maxBatch)
	flush := func(lastSeq uint64) error {
		if len(batch) == 0 {
			return nil
		}
		results, err := retry.Do(ctx, retry.InPlace, func() ([]Result, error) { return a.Apply(ctx, batch) }, nil)
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("replay: %w", ctx.Err())
		}
		if err != nil {
			// One command may be what breaks the commit: it fails alone
			// (counted as failed) and the others are applied.
			log.Warn().Err(err).Int("batch", len(batch)).Msg("replay: store failed; applying the batch in parts")
			results = a.ApplyIsolating(ctx, batch)
		}
		for i, res := range results {
			switch {
			case res.Transient != nil:
				rep.Failed++
				log.Error().Err(res.Transient).Uint64("stream_seq", batch[i].StreamSeq).Str("subject", Truncate(batch[i].Subject)).Msg("replay: command failed again")
			case res.Repeat:
				rep.Repeats++
			case res.Answer.Err != nil:
				rep.Refused++
			default:
				rep.Applied++
			}
		}
		batch = batch[:0]
		if progress != nil {
			progress(rep, lastSeq)
		}
		return nil
	}
	for {
		c, err := next(ctx)
		if errors.Is(err, io.EOF) {
			break // the rest of the range is not in the stream
		}
		if err != nil {
			return rep, fmt.Errorf("replay: %w", err)
		}
		if c.StreamSeq > r.ToSeq {
			break
		}
		if r.matches(c.Subject, c.Timestamp) {
			rep.Read++
			batch = append(batch, c)
		}
		if len(batch) == maxBatch {
			if err := flush(c.StreamSeq); err != nil {
				return rep, err
			}
		}
		if c.StreamSeq == r.ToSeq {
			break
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
	}
	return rep, flush(r.ToSeq)
}

func (r ReplayRange) matches(subject string, at time.Time) bool {
	if r.UserID != "" && !strings.HasSuffix(subject, "."+r.UserID) {
		return false
	}
	if !r.Since.IsZero() && at.Before(r.Since) {
		return false
	}
	if !r.Until.IsZero() && !at.Before(r.Until) {
		return false
	}
	return true
}
