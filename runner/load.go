package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/snapshot"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
	"github.com/passkeys/worker/trust"
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
	si, err := s.cfg.Stream.Info(ctx) // once: what the snapshot and the store are checked against
	if err != nil {
		return err
	}
	if storage.Unclean(path) {
		log.Warn().Msg("the partition's store ran without fsync and was not closed (a crash or a power cut): it is rebuilt from the newest snapshot and the stream")
		if err := storage.Discard(path); err != nil {
			return err
		}
	}
	if err := s.fetchSnapshot(ctx, pt, path, si, log); err != nil {
		return err
	}
	if pt.store, err = storage.Open(path, storage.Options{Timeout: s.cfg.StoreTimeout, NoSync: s.cfg.StoreNoSync}); err != nil {
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
	if err := s.checkStream(ctx, pt, applied, si, log); err != nil {
		return err
	}
	if err := trust.AwaitEntries(ctx, pt.store, s.cfg.Reader, pt.p, pt.lease.Progress, log); err != nil {
		return err
	}
	applier := &command.Applier{Store: pt.store, Verifier: s.cfg.Verifier, Retention: s.cfg.Retention, Log: log,
		Fence: pt.lease.Check}
	if pt.partition, err = handler.NewPartition(pt.p, applier, s.cfg.Reader, s.cfg.MaxBatch); err != nil {
		return err
	}
	// The commands the holder before was handed and did not acknowledge
	// are answered once the partition is served (serve), not after their
	// ack wait.
	pt.early = &handler.EarlyAnswers{}
	if !s.cfg.NoEarlyAnswers {
		pt.early = handler.NewEarlyAnswers(pt.cons.CachedInfo())
	}
	n, err := pt.partition.CatchUp(ctx, retry.Wait, pt.lease.Progress, pt.early.Note)
	if err != nil {
		return err
	}
	if n > 0 {
		log.Info().Int("applied", n).Uint64("applied_seq", pt.partition.Applied()).Msg("caught up with the stream")
	}
	return nil
}

// fetchSnapshot puts the partition's newest snapshot in place of its store
// at path when it is ahead of it (and belongs to the stream), and notes
// which snapshot the state starts from.
func (s *Set) fetchSnapshot(ctx context.Context, pt *part, path string, si *jetstream.StreamInfo, log zerolog.Logger) error {
	local, err := s.localApplied(path)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	accept := func(st snapshot.State) error {
		why, _, err := s.ofStream(ctx, pt.p, si, st)
		if err == nil && why != "" {
			err = errors.New(why)
		}
		return err
	}
	if err := s.transfer(ctx, pt.lease.Progress); err != nil {
		return err
	}
	info, loaded, err := s.cfg.Snapshots.Fetch(ctx, pt.p, local, path, accept, pt.lease.Check, pt.lease.Progress)
	<-s.transfers
	if errors.Is(err, snapshot.ErrRefused) {
		// Loud, and no harm done: the local store (or the stream alone) is
		// what the partition is rebuilt from, and checked after. The
		// snapshot is set aside, so that it is not taken for the newest.
		log.Error().Err(err).Msg("the partition's newest snapshot does not belong to the stream; it is not loaded, and is set aside as refused.<name>")
		if err := s.cfg.Snapshots.SetAside(ctx, info, err.Error(), pt.lease.Check); err != nil {
			log.Warn().Err(err).Msg("could not set the refused snapshot aside")
		}
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
func (s *Set) checkStream(ctx context.Context, pt *part, applied uint64, si *jetstream.StreamInfo, log zerolog.Logger) error {
	ci, err := pt.cons.Info(ctx)
	if err != nil {
		return err
	}
	st := snapshot.State{Applied: applied}
	var refused string
	err = pt.store.View(func(tx *storage.Tx) error {
		st.Stream, st.AppliedAt, refused = tx.Stream(), tx.AppliedAt(), tx.Refused()
		return nil
	})
	if err != nil {
		return err
	}
	why, same, err := s.ofStream(ctx, pt.p, si, st)
	if err != nil {
		return err
	}
	switch {
	case why != "":
		if why != refused {
			if err := pt.store.Update(func(tx *storage.Tx) error { return tx.SetRefused(why) }); err != nil {
				return err
			}
		}
		return unrecoverable{fmt.Errorf("%s: its commands would be taken for ones applied already; restore the stream the state "+
			"belongs to, or remove the partition's stores and the snapshots in %s", why, topology.SnapshotBucket)}
	case refused != "" && !same:
		// Refused before, and nothing tells now that the stream is the
		// state's again: the refusal stands.
		return unrecoverable{fmt.Errorf("%s (refused before, and the stream's command under %d no longer tells): "+
			"remove the partition's stores and the snapshots in %s", refused, applied, topology.SnapshotBucket)}
	case refused != "":
		log.Warn().Str("refused_before", refused).Msg("the stream the partition's state belongs to is back: it is served again")
		if err := pt.store.Update(func(tx *storage.Tx) error { return tx.SetRefused("") }); err != nil {
			return err
		}
	}
	if st.Stream == "" {
		if err := pt.store.Update(func(tx *storage.Tx) error { return tx.SetStream(StreamID(si)) }); err != nil {
			return err
		}
	}
	if ci.AckFloor.Stream <= applied {
		return nil
	}
	first, gone, err := s.firstAfter(ctx, applied)
	if err != nil || !gone {
		return err
	}
	msg := fmt.Sprintf("the partition's state has applied the stream up to sequence %d, its consumer acknowledged up to %d, "+
		"but the stream now holds commands only from %d: commands between are gone and cannot be applied", applied, ci.AckFloor.Stream, first)
	if !s.cfg.AllowStoreGap {
		return unrecoverable{errors.New(msg + "; restore a newer backup (or snapshot), or start a worker with --allow-store-gap to accept the loss")}
	}
	log.Error().Msg(msg + "; going on as --allow-store-gap says")
	return nil
}

// firstAfter is the first command the stream holds after applied, and
// whether any message between is gone. MaxAge drops the stream's oldest
// messages first: while the command at applied is still there, nothing
// after it is gone by age. Otherwise only the control entries, which never
// expire, may lie between.
func (s *Set) firstAfter(ctx context.Context, applied uint64) (first uint64, gone bool, err error) {
	si, err := s.cfg.Stream.Info(ctx) // before the walk: a command stored during it is not taken for a gap
	if err != nil {
		return 0, false, err
	}
	if m, err := s.cfg.Reader.Get(ctx, applied); err == nil {
		if _, control := partition.ControlOf(m.Subject); !control {
			return applied + 1, false, nil
		}
	}
	controls := uint64(0)
	for seq := applied + 1; seq <= si.State.LastSeq; {
		m, err := s.cfg.Reader.Next(ctx, seq, ">")
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return 0, false, err
		}
		if _, ok := partition.ControlOf(m.Subject); !ok || m.Sequence > si.State.LastSeq {
			return m.Sequence, min(m.Sequence-1, si.State.LastSeq)-applied > controls, nil
		}
		controls, seq = controls+1, m.Sequence+1
	}
	return si.State.LastSeq + 1, si.State.LastSeq-applied > controls, nil
}

// ofStream tells why a partition state (a store, a snapshot) does not
// belong to the stream as it is (si), "" when nothing says so: it was built
// from another stream PASSKEYS (created again); it has applied more than
// the stream holds (created again, or restored from an older backup); or
// the stream holds another command under the sequence the state applied
// last than the one the state applied (a stream restored from a backup
// keeps its creation time, and may have grown past the state since). same
// tells that the stream's command under that sequence is the state's.
func (s *Set) ofStream(ctx context.Context, p int, si *jetstream.StreamInfo, st snapshot.State) (why string, same bool, err error) {
	if st.Applied > si.State.LastSeq {
		// Ahead of the reading taken when the load began: read again
		// before refusing (a refusal stands until it is lifted).
		fresh, err := s.cfg.Stream.Info(ctx)
		if err != nil {
			return "", false, err
		}
		si = fresh
	}
	switch id := StreamID(si); {
	case st.Stream != "" && st.Stream != id:
		return fmt.Sprintf("the partition's state was built from another stream PASSKEYS (created %s) than this one (created %s)",
			st.Stream, id), false, nil
	case st.Applied > si.State.LastSeq:
		return fmt.Sprintf("the partition's state has applied the stream up to %d, but the stream holds commands only up to %d",
			st.Applied, si.State.LastSeq), false, nil
	case st.Applied == 0 || st.AppliedAt.IsZero():
		return "", false, nil
	}
	m, err := s.cfg.Reader.Get(ctx, st.Applied)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return "", false, nil // gone (MaxAge): nothing to compare
	}
	if err != nil {
		return "", false, err
	}
	got, _, err := partition.Original(m.Subject)
	if c, ok := partition.ControlOf(m.Subject); ok {
		got, err = c, nil
	}
	switch {
	case strings.HasPrefix(m.Subject, partition.CommandPrefix+"."):
		return "", false, nil // a command of the version before partitions: nothing to compare
	case err == nil && got == p && m.Time.Equal(st.AppliedAt):
		return "", true, nil
	}
	return fmt.Sprintf("the stream's command %d (%s, stamped %s) is not the one the partition's state applied under %d (stamped %s)",
		st.Applied, m.Subject, m.Time.UTC().Format(time.RFC3339Nano), st.Applied, st.AppliedAt.UTC().Format(time.RFC3339Nano)), false, nil
}

// StreamID names stream PASSKEYS as info says it is: by its creation time,
// which stays the same through updates and leader changes.
func StreamID(info *jetstream.StreamInfo) string { return info.Created.UTC().Format(time.RFC3339Nano) }

// unpin lets the partition's consumer serve whoever pulls next.
func (s *Set) unpin(ctx context.Context, p int, log zerolog.Logger) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	if err := s.cfg.Stream.UnpinConsumer(uctx, topology.PartitionConsumerName(p), topology.PriorityGroup); err != nil {
		log.Debug().Err(err).Msg("unpin")
	}
}
