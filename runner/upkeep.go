package runner

import (
	"context"
	"time"

	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/internal/clock"
)

// Replay serves passkeys.admin.replay for the partitions this worker
// serves: only what each has applied; the rest its handler applies itself.
func (s *Set) Replay(ctx context.Context, r handler.ReplayRange) (handler.ReplayReport, error) {
	total := handler.ReplayReport{FromSeq: r.FromSeq, ToSeq: r.ToSeq}
	var maxApplied uint64
	for _, pt := range s.serving() {
		applied := pt.partition.Applied()
		pr := r
		pr.ToSeq = min(r.ToSeq, applied)
		if pr.ToSeq < pr.FromSeq {
			continue
		}
		rep, err := pt.partition.Replay(ctx, pr)
		if err != nil {
			return total, err
		}
		total.Add(rep)
		maxApplied = max(maxApplied, applied)
	}
	total.ToSeq = min(r.ToSeq, maxApplied)
	total.Partitions = s.Serving()
	return total, nil
}

// pruneInterval is how often expired outcome records are pruned. A pass
// reads the whole store (storage.PruneOutcomes); against a retention of
// days, an hour's delay is nothing.
const pruneInterval = time.Hour

// pruneMargin is how far behind the command stream's clock pruning
// stays; maxPruneSkew how far that clock and this machine's may differ for
// pruning to go ahead.
const (
	pruneMargin  = time.Hour
	maxPruneSkew = 10 * time.Minute
)

// PruneOutcomes deletes expired outcome records of the partitions served,
// an hour after the worker starts and every hour after, in small
// transactions so the handlers are never held up for long, until ctx
// ends. "Expired" is by the command stream's clock (its leader's,
// STREAM.INFO), less pruneMargin, never this worker's: a record is pruned
// only when it expired so long ago that no command that could still look
// for it exists. A repeat stored since has a later timestamp, and a record
// expired as of a command's own timestamp is ignored by that command
// whether or not it was pruned yet; the original command is past the
// stream's MaxAge (the same retention) by more than the margin, so the
// stream no longer holds it to deliver it again. So pruning changes no
// answer, unless the leader's clock is off by more than the margin: a
// reading that this machine's clock does not confirm within maxPruneSkew
// prunes nothing.
func (s *Set) PruneOutcomes(ctx context.Context) {
	const chunk = 5000
	log := s.cfg.Log
	tick := time.NewTicker(pruneInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := s.cfg.Stream.Info(ictx)
		cancel()
		if err != nil || info.TimeStamp.IsZero() {
			log.Warn().Err(err).Msg("outcome records not pruned: the command stream's clock could not be read")
			continue
		}
		if d := clock.Wall().Sub(info.TimeStamp); d > maxPruneSkew || d < -maxPruneSkew {
			// One of the two clocks is wrong, and which one cannot be told.
			log.Warn().Time("stream_clock", info.TimeStamp).Msg("outcome records not pruned: the command stream's leader's clock and this machine's differ by more than 10 minutes")
			continue
		}
		until := info.TimeStamp.Add(-pruneMargin)
		for _, pt := range s.serving() {
			start := time.Now()
			n, err := pt.store.PruneOutcomes(until, chunk)
			if err != nil {
				log.Error().Err(err).Int("partition", pt.p).Int("pruned", n).Msg("prune outcome records")
			} else if n > 0 {
				log.Info().Int("partition", pt.p).Int("pruned", n).Dur("took", time.Since(start)).Msg("expired outcome records pruned")
			}
		}
	}
}
