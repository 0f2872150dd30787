package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/pipeline"
	"github.com/passkeys/worker/snapshot"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
)

// LegacyStoreFile is the one store of the version before partitions, in the
// data directory: a worker that still has it upgrades it at start
// (package upgrade).
const LegacyStoreFile = "passkeys.db"

// unrecoverable is the error of a partition whose state cannot be rebuilt
// on any worker from what JetStream holds.
type unrecoverable struct{ error }

// load brings the partition's state up to the stream's end: its newest
// snapshot when that is ahead of the local store (or there is none), then
// the stream's commands after it.
func (s *Set) load(ctx context.Context, pt *part, log zerolog.Logger) error {
	path := StorePath(s.cfg.DataDir, pt.p)
	local, err := s.localApplied(path)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	si, err := s.cfg.Stream.Info(ctx)
	if err != nil {
		return err
	}
	info, loaded, err := s.cfg.Snapshots.Fetch(ctx, pt.p, local, path, StreamID(si), pt.lease.Progress)
	if errors.Is(err, snapshot.ErrOtherStream) {
		// Loud, and no harm done: the local store (or the stream alone)
		// is what the partition is rebuilt from, and checked below.
		log.Error().Err(err).Msg("the partition's newest snapshot was built from another stream PASSKEYS; it is not loaded")
		info, err = snapshot.Info{}, nil
	}
	if err != nil {
		return err
	}
	if loaded {
		log.Info().Uint64("local_applied_seq", local).Uint64("snapshot_applied_seq", info.Applied).Str("snapshot", info.Name).
			Msg("partition state loaded from its snapshot")
	}
	pt.snapApplied = info.Applied
	if !info.Time.IsZero() {
		pt.snapAt = info.Time
	}
	if pt.store, err = storage.Open(path, storage.Options{Timeout: s.cfg.StoreTimeout, NoSync: s.cfg.NoSync}); err != nil {
		return err
	}
	applied, err := pt.store.AppliedSeq()
	if err != nil {
		return err
	}
	if applied < s.cfg.LegacyUntil {
		return unrecoverable{fmt.Errorf("the partition's state has applied the stream up to %d, but the stream held commands up to %d "+
			"before it was partitioned, and no snapshot covers them: start the worker that holds the data directory of "+
			"the version before (its %s is upgraded at start) first", applied, s.cfg.LegacyUntil, LegacyStoreFile)}
	}
	if pt.cons, err = s.cfg.Stream.Consumer(ctx, topology.PartitionConsumerName(pt.p)); err != nil {
		return fmt.Errorf("consumer %s: %w", topology.PartitionConsumerName(pt.p), err)
	}
	if err := s.checkStream(ctx, pt, applied, log); err != nil {
		return err
	}
	pt.applier = &command.Applier{Store: pt.store, Verifier: s.cfg.Verifier, Keys: s.cfg.Keys, Retention: s.cfg.Retention, Log: log,
		Fence: pt.lease.Check}
	n, last, err := pipeline.CatchUp(ctx, s.cfg.Reader, pt.applier, partition.Filter(pt.p), applied, s.cfg.MaxBatch, retry.Wait,
		pt.lease.Progress)
	if err != nil {
		return err
	}
	if n > 0 {
		log.Info().Int("applied", n).Uint64("applied_seq", last).Msg("caught up with the stream")
	}
	return nil
}

// localApplied is the applied sequence of the store at path; 0 without
// one.
func (s *Set) localApplied(path string) (uint64, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	st, err := storage.Open(path, storage.Options{Timeout: s.cfg.StoreTimeout})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	return st.AppliedSeq()
}

// checkStream refuses a partition state that does not belong to the
// stream as it is: one built from another stream PASSKEYS (deleted and
// created again, or restored from a backup: its commands would be taken
// for ones applied already), one ahead of the stream's last command, and
// one (restored from an old backup, with no newer snapshot) that misses
// commands the stream no longer holds: the partition's consumer
// acknowledged past what the state applied, and the stream has since
// dropped them (MaxAge). AllowStoreGap accepts that last loss. A state
// that never said which stream it follows (from before this check) is
// taken to follow this one.
func (s *Set) checkStream(ctx context.Context, pt *part, applied uint64, log zerolog.Logger) error {
	ci, err := pt.cons.Info(ctx)
	if err != nil {
		return err
	}
	si, err := s.cfg.Stream.Info(ctx)
	if err != nil {
		return err
	}
	id := StreamID(si)
	var follows, refused string
	var appliedAt time.Time
	err = pt.store.View(func(tx *storage.Tx) error {
		follows, refused, appliedAt = tx.Stream(), tx.Refused(), tx.AppliedAt()
		return nil
	})
	if err != nil {
		return err
	}
	if refused == "" {
		refused, err = s.otherCommandAt(ctx, pt.p, applied, appliedAt)
		if err != nil {
			return err
		}
		if refused != "" {
			if err := pt.store.Update(func(tx *storage.Tx) error { return tx.SetRefused(refused) }); err != nil {
				return err
			}
		}
	}
	switch {
	case refused != "":
		return unrecoverable{fmt.Errorf("%s: the stream was restored or created again, and its commands would be taken for ones "+
			"applied already; restore the stream the state belongs to, or remove the partition's stores and the snapshots in %s",
			refused, topology.SnapshotBucket)}
	case follows != "" && follows != id:
		return unrecoverable{fmt.Errorf("the partition's state was built from another stream PASSKEYS (created %s) than this one "+
			"(created %s): the stream was created again or restored, and its commands would be taken for ones applied already; "+
			"restore the stream the state belongs to, or remove the partition's stores and the snapshots in %s",
			follows, id, topology.SnapshotBucket)}
	case applied > si.State.LastSeq:
		return unrecoverable{fmt.Errorf("the partition's state has applied the stream up to %d, but the stream holds commands only up to %d: "+
			"it was created again or restored from an older backup; restore the stream the state belongs to, or remove the partition's "+
			"stores and the snapshots in %s", applied, si.State.LastSeq, topology.SnapshotBucket)}
	case follows == "":
		if err := pt.store.Update(func(tx *storage.Tx) error { return tx.SetStream(id) }); err != nil {
			return err
		}
	}
	ackFloor, first := ci.AckFloor.Stream, si.State.FirstSeq
	if ackFloor <= applied || first <= applied+1 {
		return nil
	}
	msg := fmt.Sprintf("the partition's state has applied the stream up to sequence %d, its consumer acknowledged up to %d, "+
		"but the stream now starts at %d: commands between are gone and cannot be applied", applied, ackFloor, first)
	if !s.cfg.AllowStoreGap {
		return unrecoverable{errors.New(msg + "; restore a newer backup (or snapshot), or start a worker with --allow-store-gap to accept the loss")}
	}
	log.Error().Msg(msg + "; going on as --allow-store-gap says")
	return nil
}

// otherCommandAt tells, when the stream still holds a command of partition
// p under applied, the sequence the store applied last, whether it is
// another command than the one the store applied (stamped at appliedAt):
// a stream restored from a backup keeps its creation time, and once it has
// grown past the store's sequence, only this tells them apart. "" when it
// is the same one, or nothing can be compared.
func (s *Set) otherCommandAt(ctx context.Context, p int, applied uint64, appliedAt time.Time) (string, error) {
	if applied == 0 || appliedAt.IsZero() {
		return "", nil
	}
	m, err := s.cfg.Reader.Next(ctx, applied, partition.Filter(p))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return "", nil
	case err != nil:
		return "", err
	case m.Sequence != applied || m.Time.Equal(appliedAt):
		return "", nil
	}
	return fmt.Sprintf("the stream's command %d is stamped %s, but the one the partition's state applied under %d was stamped %s",
		applied, m.Time.UTC().Format(time.RFC3339Nano), applied, appliedAt.UTC().Format(time.RFC3339Nano)), nil
}

// StreamID names the instance of a stream: its creation time, which
// stays the same through updates and leader changes.
func StreamID(info *jetstream.StreamInfo) string { return info.Created.UTC().Format(time.RFC3339Nano) }

// unpin lets the partition's consumer serve whoever pulls next.
func (s *Set) unpin(ctx context.Context, p int, log zerolog.Logger) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	if err := s.cfg.Stream.UnpinConsumer(uctx, topology.PartitionConsumerName(p), topology.PriorityGroup); err != nil {
		log.Debug().Err(err).Msg("unpin")
	}
}
