package runner

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/passkeys/worker/storage"
)

// The snapshot policy. A takeover loads the newest snapshot and applies
// the stream after it, so a snapshot need only be recent enough that the
// catch-up is short, and far younger than the stream's MaxAge; every
// snapshot costs the whole partition's file (about 49 MB a partition at
// 1,000,000 users in 8). So a changed partition is written once
// DefaultSnapshotChanges commands were applied since its newest snapshot
// (a catch-up of at most that many), or once that snapshot is
// DefaultSnapshotInterval old, and when a worker lets go of it.
const (
	DefaultSnapshotInterval = time.Hour
	DefaultSnapshotChanges  = 50_000
	// snapshotCheck is how often the policy is looked at (at most).
	snapshotCheck = time.Minute
)

// snapshotLoop writes the partition's snapshot while the worker serves it,
// as the policy says.
func (s *Set) snapshotLoop(ctx context.Context, pt *part, log zerolog.Logger) {
	tick := time.NewTicker(min(s.cfg.SnapshotInterval, snapshotCheck))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !s.snapshotDue(pt) {
			continue
		}
		if err := s.snapshot(ctx, pt); err != nil && ctx.Err() == nil {
			s.snapFailures.Add(1)
			log.Error().Err(err).Dur("snapshot_age", time.Since(pt.snapshotTime())).
				Msg("could not write the partition's snapshot: a worker that takes it over must apply more of the stream, and once the stream's MaxAge passes it cannot")
		}
	}
}

// snapshotDue tells whether the partition's state is ahead of its newest
// snapshot by the policy's count of commands, or by anything once that
// snapshot is the policy's age. A state no further than its snapshot
// counts as freshly written.
func (s *Set) snapshotDue(pt *part) bool {
	applied, err := pt.store.AppliedSeq()
	if err != nil {
		return true // snapshot says what is wrong
	}
	pt.snapMu.Lock()
	defer pt.snapMu.Unlock()
	switch {
	case applied <= pt.snapApplied && time.Since(pt.checkedAt) < s.cfg.SnapshotInterval:
		pt.snapAt = time.Now()
		return false
	case applied <= pt.snapApplied:
		// Now and then the bucket itself is asked: its newest may be gone
		// (deleted, set aside as broken) behind this worker's back.
		return true
	case applied-pt.snapApplied >= uint64(s.cfg.SnapshotChanges):
		return true
	}
	return time.Since(pt.snapAt) >= s.cfg.SnapshotInterval
}

// transfer waits for this worker's turn to move a snapshot (s.transfers);
// the caller gives it back with <-s.transfers.
// progress, when set, is called every second of the wait (a partition
// loading must not look stuck while it waits for its turn).
func (s *Set) transfer(ctx context.Context, progress func()) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case s.transfers <- struct{}{}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if progress != nil {
				progress()
			}
		}
	}
}

// snapshotTime is when the partition's newest snapshot was written or
// checked, or when the part started.
func (pt *part) snapshotTime() time.Time {
	pt.snapMu.Lock()
	defer pt.snapMu.Unlock()
	return pt.snapAt
}

// snapshot copies the partition's store to a local file (one read
// transaction, no network) and saves it as a snapshot, unless the bucket
// holds one as new already (written by this worker, or by one that served
// the partition before and got as far): the newest in the bucket, not this
// worker's memory of it, decides, so a snapshot older than the state is
// noticed and written again. The upload is fenced by the lease.
func (s *Set) snapshot(ctx context.Context, pt *part) error {
	pt.snapMu.Lock()
	defer pt.snapMu.Unlock()
	applied, err := pt.store.AppliedSeq()
	if err != nil {
		return err
	}
	newest, ok, err := s.cfg.Snapshots.Newest(ctx, pt.p)
	if err != nil {
		return err
	}
	pt.checkedAt = time.Now()
	if ok && newest.Applied >= applied {
		pt.snapApplied, pt.snapAt = newest.Applied, time.Now() // the newest snapshot is this state
		return nil
	}
	tmp := StorePath(s.cfg.DataDir, pt.p) + ".snapshot"
	defer os.Remove(tmp)
	// Copied under the transaction that read applied: the file holds
	// exactly that state.
	err = storage.WriteFileAtomic(tmp, func(f io.Writer) error {
		var err error
		_, applied, err = pt.store.Backup(f)
		return err
	})
	if err != nil {
		return fmt.Errorf("snapshot: copy the store: %w", err)
	}
	if err := s.transfer(ctx, nil); err != nil {
		return err
	}
	saved, err := s.cfg.Snapshots.Save(ctx, pt.p, tmp, applied, pt.lease.Check)
	<-s.transfers
	if err != nil {
		return err
	}
	if fi, err := os.Stat(tmp); err == nil && saved {
		s.snapBytes.Add(fi.Size())
	}
	pt.snapApplied, pt.snapAt = applied, time.Now()
	s.cfg.Log.Debug().Int("partition", pt.p).Uint64("applied_seq", applied).Msg("snapshot written")
	return nil
}
