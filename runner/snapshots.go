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

// DefaultSnapshotInterval is how often a partition's snapshot is written,
// when it applied anything since the last one.
const DefaultSnapshotInterval = time.Minute

func (s *Set) snapshotInterval() time.Duration {
	if s.cfg.SnapshotInterval > 0 {
		return s.cfg.SnapshotInterval
	}
	return DefaultSnapshotInterval
}

// snapshotLoop writes the partition's snapshot every interval while it is
// ahead of the newest one in the bucket.
func (s *Set) snapshotLoop(ctx context.Context, pt *part, log zerolog.Logger) {
	tick := time.NewTicker(s.snapshotInterval())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := s.snapshot(ctx, pt); err != nil && ctx.Err() == nil {
			s.snapFailures.Add(1)
			log.Error().Err(err).Dur("snapshot_age", time.Since(pt.snapshotTime())).
				Msg("could not write the partition's snapshot: a worker that takes it over must apply more of the stream, and once the stream's MaxAge passes it cannot")
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
	if ok && newest.Applied >= applied {
		pt.snapApplied, pt.snapAt = newest.Applied, time.Now() // the newest snapshot is this state
		return nil
	}
	tmp := StorePath(s.cfg.DataDir, pt.p) + ".snapshot"
	defer os.Remove(tmp)
	// Copied under the transaction that read applied: the file holds
	// exactly that state.
	err = storage.WriteFileAtomic(tmp, func(f io.Writer) error {
		_, err := pt.store.BackupApplied(f, &applied)
		return err
	})
	if err != nil {
		return fmt.Errorf("snapshot: copy the store: %w", err)
	}
	if _, err := s.cfg.Snapshots.Save(ctx, pt.p, tmp, applied, pt.lease.Check); err != nil {
		return err
	}
	pt.snapApplied, pt.snapAt = applied, time.Now()
	s.cfg.Log.Debug().Int("partition", pt.p).Uint64("applied_seq", applied).Msg("snapshot written")
	return nil
}
