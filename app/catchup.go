package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/storage"
)

// catchUp replays, before the worker takes new work, the commands that the
// consumer has acknowledged but the store has not applied: the store was
// restored from an older backup. Each is applied as it was the first time
// (its token and changeDate judged at its stream timestamp), so the store
// ends as one that never went back. Nobody is replied to: the requesters
// were answered the first time.
func catchUp(ctx context.Context, js jetstream.JetStream, cons jetstream.Consumer, proc *handler.Processor,
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
	oc, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start,
	})
	if err != nil {
		return fmt.Errorf("catch-up: %w", err)
	}
	iter, err := oc.Messages()
	if err != nil {
		return fmt.Errorf("catch-up: %w", err)
	}
	defer iter.Stop()

	batch := make([]*handler.Command, 0, maxBatch)
	replayed, failed := 0, 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		var results []handler.Result
		var err error
		for attempt := range 3 {
			if results, err = proc.Process(batch); err == nil {
				break
			}
			time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("catch-up: store: %w", err)
		}
		for i, r := range results {
			if r.Transient != nil {
				failed++
				log.Error().Err(r.Transient).Uint64("stream_seq", batch[i].StreamSeq).Str("subject", batch[i].Subject).
					Msg("catch-up: command failed again; skipped, as it was acknowledged before")
			}
		}
		replayed += len(batch)
		batch = batch[:0]
		return nil
	}
	for {
		msg, err := iter.Next(jetstream.NextMaxWait(5 * time.Second))
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, nats.ErrTimeout) {
			break // the rest of the range was deleted from the stream
		}
		if err != nil {
			return fmt.Errorf("catch-up: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("catch-up: %w", err)
		}
		seq := meta.Sequence.Stream
		if seq > ackFloor {
			break
		}
		batch = append(batch, &handler.Command{Subject: msg.Subject(), Header: msg.Headers(), Body: msg.Data(), StreamSeq: seq, Timestamp: meta.Timestamp})
		if len(batch) == maxBatch || seq == ackFloor {
			if err := flush(); err != nil {
				return err
			}
			if replayed%10000 < maxBatch {
				log.Info().Int("replayed", replayed).Uint64("stream_seq", seq).Uint64("ack_floor", ackFloor).Msg("catch-up progress")
			}
		}
		if seq == ackFloor {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if err := flush(); err != nil {
		return err
	}
	log.Info().Int("replayed", replayed).Int("failed", failed).Msg("catch-up done: the store is at the consumer's acknowledged position")
	return nil
}
