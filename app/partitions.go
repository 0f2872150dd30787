package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/metrics"
	"github.com/passkeys/worker/ownership"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/snapshot"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
)

// PartitionsDir is where the partitions' stores live inside the data
// directory, one bbolt file each (partition.Name + ".db").
const PartitionsDir = "partitions"

// partitionSet runs the partitions this worker holds: for each lease the
// ownership coordinator hands it, it loads the partition's state (its
// newest snapshot, its own store, the stream after them), serves it
// (consumes its commands, answers its reads) while the lease is valid, and
// lets go of it (finishes what it has in hand, writes a snapshot).
type partitionSet struct {
	n       int
	dataDir string
	cfg     *Config
	// legacyUntil is the stream's MetaLegacyUntil: a partition's state
	// must have applied that far before it may serve.
	legacyUntil uint64

	nc       *nats.Conn
	stream   jetstream.Stream
	reader   *jsread.Reader
	eventsJS jetstream.JetStream
	// eventsRead reads stream PASSKEYS_EVENTS: whether an old event of an
	// outbox was published already.
	eventsRead *jsread.Reader
	verifier   *auth.Verifier
	keys       command.KeyClock
	snaps      *snapshot.Store
	metrics    *metrics.Metrics
	observer   handler.Observer
	replies    *handler.ReplyGuard
	service    *handler.Service // set before the partitions are run
	coord      *ownership.Coordinator
	log        zerolog.Logger

	mu   sync.RWMutex
	held map[int]*part
	// unrecoverable holds the partitions whose state could not be rebuilt
	// here (the stream no longer holds commands the state misses), with
	// why, until one is served.
	unrecoverable map[int]error
	snapFailures  atomic.Int64 // snapshots that could not be written
}

// part is one partition this worker holds.
type part struct {
	p       int
	lease   *ownership.Lease
	store   *storage.Store
	applier *command.Applier
	events  *handler.EventPublisher
	cons    jetstream.Consumer

	snapMu      sync.Mutex
	snapApplied uint64    // applied sequence of the newest snapshot known
	snapAt      time.Time // when it was written or checked, or when the part started
}

// unrecoverable is the error of a partition whose state cannot be rebuilt
// on any worker from what JetStream holds.
type unrecoverable struct{ error }

func (ps *partitionSet) storePath(p int) string {
	return filepath.Join(ps.dataDir, PartitionsDir, partition.Name(p)+".db")
}

// served lists the parts this worker serves now: caught up, consuming,
// under a valid lease.
func (ps *partitionSet) served() []*part {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	out := make([]*part, 0, len(ps.held))
	for _, pt := range ps.held {
		if pt.lease.Serving() {
			out = append(out, pt)
		}
	}
	slices.SortFunc(out, func(a, b *part) int { return a.p - b.p })
	return out
}

// servedPart is partition p's part when this worker serves it.
func (ps *partitionSet) servedPart(p int) (*part, bool) {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	pt := ps.held[p]
	return pt, pt != nil && pt.lease.Serving()
}

// Local is the store of userID's partition when this worker serves it,
// and how to tell whether it still does once the store was read.
func (ps *partitionSet) Local(userID string) (handler.Held, int, bool) {
	p := partition.Of(userID, ps.n)
	pt, ok := ps.servedPart(p)
	if !ok {
		return handler.Held{}, p, false
	}
	return handler.Held{Store: pt.store, Valid: pt.lease.Serving}, p, true
}

// Held lists the partitions this worker serves, in order.
func (ps *partitionSet) Held() []int {
	var out []int
	for _, pt := range ps.served() {
		out = append(out, pt.p)
	}
	return out
}

// Unrecoverable lists the partitions whose state could not be rebuilt
// here, with why.
func (ps *partitionSet) Unrecoverable() map[int]error {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	out := make(map[int]error, len(ps.unrecoverable))
	for p, err := range ps.unrecoverable {
		out[p] = err
	}
	return out
}

// awaitFirstRound waits until the partitions taken in the first round are
// served or given up on, at most wait.
func (ps *partitionSet) awaitFirstRound(ctx context.Context, wait time.Duration) {
	select {
	case <-ps.coord.FirstRound():
	case <-ctx.Done():
		return
	}
	deadline := time.Now().Add(wait)
	for _, l := range ps.coord.Leases() {
		for !l.Serving() && l.Context().Err() == nil {
			if time.Now().After(deadline) {
				ps.log.Warn().Dur("waited", wait).Msg("answering requests before every partition taken is served")
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// run serves the partition of lease l until its context ends: the
// ownership coordinator's Runner.
func (ps *partitionSet) run(l *ownership.Lease) error {
	pt := &part{p: l.Partition, lease: l, snapAt: time.Now()}
	log := ps.log.With().Int("partition", pt.p).Logger()
	ps.mu.Lock()
	ps.held[pt.p] = pt
	ps.mu.Unlock()
	defer func() {
		ps.mu.Lock()
		delete(ps.held, pt.p)
		ps.mu.Unlock()
	}()
	ps.metrics.Failover("taken")
	defer ps.metrics.Failover("released")
	ctx := l.Context()
	err := ps.load(ctx, pt, log)
	var u unrecoverable
	if errors.As(err, &u) {
		ps.mu.Lock()
		ps.unrecoverable[pt.p] = u.error
		ps.mu.Unlock()
		log.Error().Err(u.error).Msg("PARTITION CANNOT BE REBUILT: it is not served; the worker's other partitions go on")
	}
	if err == nil {
		ps.mu.Lock()
		delete(ps.unrecoverable, pt.p)
		ps.mu.Unlock()
		err = ps.serve(ctx, pt, log)
	}
	ps.finish(pt, log)
	if ctx.Err() != nil {
		if cause := context.Cause(ctx); errors.Is(cause, ownership.ErrReleased) {
			log.Info().Msg("partition let go of")
		} else {
			log.Warn().Str("why", cause.Error()).Msg("lease lost: stopped applying to and answering from the partition at once")
		}
		return nil
	}
	return err
}

// load brings the partition's state up to the stream's end: its newest
// snapshot when that is ahead of the local store (or there is none), then
// the stream's commands after it.
func (ps *partitionSet) load(ctx context.Context, pt *part, log zerolog.Logger) error {
	path := ps.storePath(pt.p)
	local, err := ps.localApplied(path)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	info, loaded, err := ps.snaps.Fetch(ctx, pt.p, local, path, pt.lease.Progress)
	if err != nil {
		return err
	}
	if loaded {
		log.Info().Uint64("local_applied_seq", local).Uint64("snapshot_applied_seq", info.Applied).Str("snapshot", info.Name).
			Msg("partition state loaded from its snapshot")
	}
	pt.snapApplied = info.Applied
	if pt.store, err = storage.Open(path, storage.Options{Timeout: ps.cfg.StoreTimeout, NoSync: ps.cfg.NoSync}); err != nil {
		return err
	}
	var applied uint64
	if err := pt.store.View(func(tx *storage.Tx) error { applied = tx.AppliedSeq(); return nil }); err != nil {
		return err
	}
	if applied < ps.legacyUntil {
		return unrecoverable{fmt.Errorf("the partition's state has applied the stream up to %d, but the stream held commands up to %d "+
			"before it was partitioned, and no snapshot covers them: start the worker that holds the data directory of "+
			"the version before (its %s is migrated at start) first", applied, ps.legacyUntil, StoreFile)}
	}
	if pt.cons, err = ps.stream.Consumer(ctx, topology.PartitionConsumerName(pt.p)); err != nil {
		return fmt.Errorf("consumer %s: %w", topology.PartitionConsumerName(pt.p), err)
	}
	if err := ps.checkGap(ctx, pt.cons, applied, log); err != nil {
		return err
	}
	pt.applier = &command.Applier{Store: pt.store, Verifier: ps.verifier, Keys: ps.keys, Retention: ps.cfg.Retention, Log: log,
		Fence: pt.lease.Check}
	caught, err := handler.CatchUp(ctx, ps.reader, pt.applier, partition.Filter(pt.p), applied, ps.cfg.MaxBatch, retry.Wait, log,
		pt.lease.Progress)
	if err != nil {
		return err
	}
	if caught.Read > 0 {
		log.Info().Int("applied", caught.Read).Uint64("applied_seq", caught.ToSeq).Msg("caught up with the stream")
	}
	return nil
}

// localApplied is the applied sequence of the store at path; 0 without
// one.
func (ps *partitionSet) localApplied(path string) (uint64, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	s, err := storage.Open(path, storage.Options{Timeout: ps.cfg.StoreTimeout})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	var applied uint64
	err = s.View(func(tx *storage.Tx) error { applied = tx.AppliedSeq(); return nil })
	return applied, err
}

// serve consumes the partition's commands and answers its reads until ctx
// ends.
func (ps *partitionSet) serve(ctx context.Context, pt *part, log zerolog.Logger) error {
	var applied uint64
	if err := pt.store.View(func(tx *storage.Tx) error { applied = tx.AppliedSeq(); return nil }); err != nil {
		return err
	}
	pt.events = handler.NewEventPublisher(ps.eventsJS, pt.store, log, ps.metrics)
	pt.events.Hold = ps.cfg.HoldEvents
	pt.events.Published, pt.events.Dedup = ps.eventsRead, ps.cfg.EventsDuplicates
	sub, err := ps.service.ServeInternal(pt.p, handler.Held{Store: pt.store, Valid: pt.lease.Serving})
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	published := make(chan struct{})
	go func() { defer close(published); pt.events.Run(ctx) }()
	defer func() { <-published }()
	snapped := make(chan struct{})
	go func() { defer close(snapped); ps.snapshotLoop(ctx, pt, log) }()
	defer func() { <-snapped }()

	consumer := &handler.Consumer{
		Committed:     pt.events.Wake,
		Applier:       pt.applier,
		Conn:          ps.nc,
		Log:           log,
		MaxBatch:      ps.cfg.MaxBatch,
		StoreRetry:    retry.Wait,
		PriorityGroup: topology.PriorityGroup,
		Order:         &handler.OrderGuard{Reader: ps.reader, Filter: partition.Filter(pt.p), Applied: applied},
		Observer:      ps.observer,
		Replies:       ps.replies,
	}
	// The lease is ours, so whoever held the pin before lost it or let go:
	// unpin, so that this worker's pulls are served now, not once the old
	// pin times out (PinnedTTL). Were the old owner still pulling, both
	// would apply the same commands alike for a moment.
	ps.unpin(ctx, pt.p, log)
	pt.lease.SetServing(true)
	defer pt.lease.SetServing(false)
	log.Info().Uint64("applied_seq", applied).Str("worker_id", ps.coord.ID()).Msg("serving the partition")
	return consumer.Run(ctx, pt.cons)
}

func (ps *partitionSet) unpin(ctx context.Context, p int, log zerolog.Logger) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	if err := ps.stream.UnpinConsumer(uctx, topology.PartitionConsumerName(p), topology.PriorityGroup); err != nil {
		log.Debug().Err(err).Msg("unpin")
	}
}

// checkGap refuses a partition state (restored from an old backup, with no
// newer snapshot) that misses commands the stream no longer holds: the
// partition's consumer acknowledged past what the state applied, and the
// stream has since dropped them (MaxAge). --allow-store-gap accepts the loss.
func (ps *partitionSet) checkGap(ctx context.Context, cons jetstream.Consumer, applied uint64, log zerolog.Logger) error {
	ci, err := cons.Info(ctx)
	if err != nil {
		return err
	}
	si, err := ps.stream.Info(ctx)
	if err != nil {
		return err
	}
	ackFloor, first := ci.AckFloor.Stream, si.State.FirstSeq
	if ackFloor <= applied || first <= applied+1 {
		return nil
	}
	msg := fmt.Sprintf("the partition's state has applied the stream up to sequence %d, its consumer acknowledged up to %d, "+
		"but the stream now starts at %d: commands between are gone and cannot be applied", applied, ackFloor, first)
	if !ps.cfg.AllowStoreGap {
		return unrecoverable{errors.New(msg + "; restore a newer backup (or snapshot), or start a worker with --allow-store-gap to accept the loss")}
	}
	log.Error().Msg(msg + "; going on as --allow-store-gap says")
	return nil
}

// finish ends a part: a last snapshot while the lease is still held, the
// consumer unpinned for the next owner, the store closed.
func (ps *partitionSet) finish(pt *part, log zerolog.Logger) {
	if pt.store == nil {
		return
	}
	if pt.lease.Valid() && pt.applier != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := ps.snapshot(ctx, pt); err != nil {
			log.Warn().Err(err).Msg("could not write the partition's snapshot while letting go of it")
		}
		cancel()
		ps.unpin(context.Background(), pt.p, log)
	}
	if err := pt.store.Close(); err != nil {
		log.Warn().Err(err).Msg("close store")
	}
}

// snapshotInterval is how often a partition's snapshot is written, when it
// applied anything since the last one.
const snapshotInterval = time.Minute

// snapshotLoop writes the partition's snapshot every interval while it is
// ahead of the newest one in the bucket.
func (ps *partitionSet) snapshotLoop(ctx context.Context, pt *part, log zerolog.Logger) {
	tick := time.NewTicker(ps.cfg.snapshotEvery())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := ps.snapshot(ctx, pt); err != nil && ctx.Err() == nil {
			ps.snapFailures.Add(1)
			log.Error().Err(err).Dur("snapshot_age", time.Since(pt.snapTime())).
				Msg("could not write the partition's snapshot: a worker that takes it over must apply more of the stream, and once the stream's MaxAge passes it cannot")
		}
	}
}

func (pt *part) snapTime() time.Time {
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
func (ps *partitionSet) snapshot(ctx context.Context, pt *part) error {
	pt.snapMu.Lock()
	defer pt.snapMu.Unlock()
	var applied uint64
	if err := pt.store.View(func(tx *storage.Tx) error { applied = tx.AppliedSeq(); return nil }); err != nil {
		return err
	}
	newest, ok, err := ps.snaps.Newest(ctx, pt.p)
	if err != nil {
		return err
	}
	if ok && newest.Applied >= applied {
		pt.snapApplied, pt.snapAt = newest.Applied, time.Now() // the newest snapshot is this state
		return nil
	}
	tmp := ps.storePath(pt.p) + ".snapshot"
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
	if _, err := ps.snaps.Save(ctx, pt.p, tmp, applied, pt.lease.Check); err != nil {
		return err
	}
	pt.snapApplied, pt.snapAt = applied, time.Now()
	ps.log.Debug().Int("partition", pt.p).Uint64("applied_seq", applied).Msg("snapshot written")
	return nil
}

// partitionStatus is one partition in /partitions.
type partitionStatus struct {
	Partition       int     `json:"partition"`
	AppliedSeq      uint64  `json:"appliedSeq"`
	SnapshotSeq     uint64  `json:"snapshotSeq"`
	SnapshotAgeSecs float64 `json:"snapshotAgeSeconds"`
}

// status is what /partitions reports: this worker and what it serves.
func (ps *partitionSet) status() map[string]any {
	var served []partitionStatus
	for _, pt := range ps.served() {
		st := partitionStatus{Partition: pt.p, SnapshotAgeSecs: time.Since(pt.snapTime()).Seconds()}
		_ = pt.store.View(func(tx *storage.Tx) error { st.AppliedSeq = tx.AppliedSeq(); return nil })
		pt.snapMu.Lock()
		st.SnapshotSeq = pt.snapApplied
		pt.snapMu.Unlock()
		served = append(served, st)
	}
	out := map[string]any{"workerId": ps.coord.ID(), "partitions": ps.n, "served": served}
	if u := ps.Unrecoverable(); len(u) > 0 {
		why := map[string]string{}
		for p, err := range u {
			why[partition.Name(p)] = err.Error()
		}
		out["unrecoverable"] = why
	}
	if a := ps.coord.Avoided(); len(a) > 0 {
		out["avoided"] = a
	}
	return out
}
