package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/storage"
)

// catchUp replays, before the worker takes new work, the commands that the
// consumer has acknowledged but the store has not applied: the store was
// restored from an older backup. Each is applied as it was the first time
// (its token and changeDate judged at its stream timestamp), so the store
// ends as one that never went back. Nobody is replied to: the requesters
// were answered the first time.
func catchUp(ctx context.Context, js jetstream.JetStream, cons jetstream.Consumer, proc *command.Applier,
	maxBatch int, allowGap bool, log zerolog.Logger) error {
	ackFloor := cons.CachedInfo().AckFloor.Stream
	var applied uint64
	if err := proc.Store.View(func(tx *storage.Tx) error { applied = tx.AppliedSeq(); return nil }); err != nil {
		return err
	}
	if applied >= ackFloor {
		return nil
	}
	stream, err := js.Stream(ctx, handler.StreamName)
	if err != nil {
		return fmt.Errorf("catch-up: %w", err)
	}
	first := stream.CachedInfo().State.FirstSeq
	if first > applied+1 {
		msg := fmt.Sprintf("the store has applied the stream up to sequence %d, the consumer acknowledged up to %d, "+
			"but the stream now starts at %d: commands %d to %d are gone and cannot be replayed", applied, ackFloor, first, applied+1, first-1)
		if !allowGap {
			return errors.New(msg + "; restore a newer backup, or start with --allow-store-gap to accept the loss")
		}
		log.Error().Msg(msg + "; going on as --allow-store-gap says")
	}
	start := max(applied+1, first)
	log.Warn().Uint64("applied_seq", applied).Uint64("ack_floor", ackFloor).Uint64("from_seq", start).
		Msg("the store is behind the consumer (restored from a backup?): replaying the gap before taking new work")
	rep, err := handler.Replay(ctx, js, proc, command.ReplayRange{FromSeq: start, ToSeq: ackFloor}, maxBatch, log,
		func(rep command.ReplayReport, seq uint64) {
			if rep.Read%10000 < maxBatch {
				log.Info().Int("replayed", rep.Read).Uint64("stream_seq", seq).Uint64("ack_floor", ackFloor).Msg("catch-up progress")
			}
		})
	if err != nil {
		return fmt.Errorf("catch-up: %w", err)
	}
	log.Info().Int("replayed", rep.Read).Int("failed", rep.Failed).Int("applied", rep.Applied).Int("refused", rep.Refused).
		Int("repeats", rep.Repeats).Msg("catch-up done: the store is at the consumer's acknowledged position")
	return nil
}
