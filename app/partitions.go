package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
)

// PartitionsDir is where the partitions' stores live inside the data
// directory, one bbolt file each (partition.Name + ".db").
const PartitionsDir = "partitions"

// Lease timing. A member renews its membership and its leases every
// leaseRenew; a key not renewed for leaseTTL expires with the bucket's
// MaxAge, so a dead worker's partitions are free within leaseTTL and taken
// at the survivors' next renewal.
const (
	leaseTTL   = topology.LeaseTTL
	leaseRenew = 2 * time.Second
)

// Keys of the lease bucket.
func memberKey(id string) string { return "members." + id }
func leaseKey(p int) string      { return "partitions." + strconv.Itoa(p) }

// snapshotMetaApplied is the object metadata holding a snapshot's applied
// stream sequence.
const snapshotMetaApplied = "applied-seq"

// partitionSet is the partitions this worker serves: it keeps the worker's
// membership and its partitions' leases in the lease bucket, takes the
// partitions the rendezvous assignment gives it once their leases are free,
// and lets go of those it no longer gets.
type partitionSet struct {
	w      *worker
	n      int
	id     string
	stream jetstream.Stream
	leases jetstream.KeyValue
	snaps  jetstream.ObjectStore
	// legacyUntil is the stream's MetaLegacyUntil: a partition's state
	// must have applied that far before it may serve.
	legacyUntil uint64
	log         zerolog.Logger

	mu       sync.RWMutex
	held     map[int]*part // taken: starting, serving or stopping
	failures atomic.Int64  // snapshots that could not be written
	wg       sync.WaitGroup
	// fatal receives an error that no retry mends (the state misses
	// commands): the worker stops with it.
	fatal chan error
	// firstRound is closed after the first round of leases.
	firstRound chan struct{}

	seenMu sync.Mutex
	seen   map[string]time.Time // members by id: when their key was last put
}

// fatal is an error of a partition that stops the worker.
type fatal struct{ error }

// part is one partition this worker holds.
type part struct {
	p       int
	rev     uint64 // the lease's revision
	store   *storage.Store
	applier *command.Applier
	events  *handler.EventPublisher
	cons    jetstream.Consumer
	serving atomic.Bool   // caught up, consuming and answering reads
	started chan struct{} // closed when serving starts
	stop    context.CancelFunc
	done    chan struct{}
	// stopping is set when the worker lets go of the partition; leaseLost
	// when its lease was taken from it.
	stopping, leaseLost bool

	snapMu      sync.Mutex
	snapApplied uint64    // applied sequence of the last snapshot taken
	snapAt      time.Time // when it was taken, or when the part started
}

func (ps *partitionSet) storePath(p int) string {
	return filepath.Join(ps.w.cfg.DataDir, PartitionsDir, partition.Name(p)+".db")
}

// Local is the store of userID's partition when this worker serves it.
func (ps *partitionSet) Local(userID string) (*storage.Store, int, bool) {
	p := partition.Of(userID, ps.n)
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	if pt := ps.held[p]; pt != nil && pt.serving.Load() {
		return pt.store, p, true
	}
	return nil, p, false
}

// Held lists the partitions this worker serves, in order.
func (ps *partitionSet) Held() []int {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	var out []int
	for p, pt := range ps.held {
		if pt.serving.Load() {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// parts is a snapshot of the held parts.
func (ps *partitionSet) parts() []*part {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	out := make([]*part, 0, len(ps.held))
	for _, pt := range ps.held {
		out = append(out, pt)
	}
	return out
}

// run keeps membership and leases until ctx ends, then lets go of every
// partition (each finishes what it has in hand and writes a snapshot) and
// leaves the membership, so the others take over at once.
func (ps *partitionSet) run(ctx context.Context) {
	ready := make(chan struct{})
	go ps.watchMembers(ctx, ready)
	select { // the members already there, before the first assignment
	case <-ready:
	case <-time.After(leaseRenew):
	case <-ctx.Done():
	}
	tick := time.NewTicker(leaseRenew)
	defer tick.Stop()
	for first := true; ; first = false {
		ps.round(ctx)
		if first {
			close(ps.firstRound)
		}
		select {
		case <-ctx.Done():
			ps.leave()
			return
		case <-tick.C:
		}
	}
}

// round is one renewal: membership, the assignment, leases renewed, let go
// of or taken.
func (ps *partitionSet) round(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, leaseRenew)
	defer cancel()
	if _, err := ps.leases.Put(rctx, memberKey(ps.id), []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
		ps.log.Warn().Err(err).Msg("could not renew membership")
		return
	}
	members := ps.members()
	want := map[int]bool{}
	for _, p := range partition.Owned(ps.id, members, ps.n) {
		want[p] = true
	}
	for _, pt := range ps.parts() {
		ps.mu.RLock()
		stopping := pt.stopping
		ps.mu.RUnlock()
		if stopping {
			continue
		}
		if !want[pt.p] {
			ps.release(pt, "assigned to another worker")
			continue
		}
		rev, err := ps.leases.Update(rctx, leaseKey(pt.p), []byte(ps.id), pt.rev)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			ps.log.Warn().Err(err).Int("partition", pt.p).Msg("lease lost: another worker holds the partition now, or it expired")
			ps.mu.Lock()
			pt.leaseLost = true
			ps.mu.Unlock()
			ps.release(pt, "lease lost")
			continue
		}
		pt.rev = rev
	}
	for p := range ps.n {
		if !want[p] {
			continue
		}
		ps.mu.RLock()
		_, held := ps.held[p]
		ps.mu.RUnlock()
		if held {
			continue
		}
		rev, err := ps.acquire(rctx, p)
		if err != nil {
			if !errors.Is(err, jetstream.ErrKeyExists) {
				ps.log.Warn().Err(err).Int("partition", p).Msg("could not take the partition's lease")
			}
			continue
		}
		ps.take(ctx, p, rev)
	}
}

// awaitFirstRound waits until the partitions taken in the first round are
// served or given up on, at most wait.
func (ps *partitionSet) awaitFirstRound(ctx context.Context, wait time.Duration) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-ps.firstRound:
	case <-ctx.Done():
		return
	}
	for _, pt := range ps.parts() {
		select {
		case <-pt.started:
		case <-pt.done:
		case <-timer.C:
			ps.log.Warn().Dur("waited", wait).Msg("answering requests before every partition taken is served")
			return
		case <-ctx.Done():
			return
		}
	}
}

// members lists the live members, sorted: those whose membership key was
// put within leaseTTL, as the watch of the bucket saw them (watchMembers),
// and this worker.
func (ps *partitionSet) members() []string {
	ps.seenMu.Lock()
	defer ps.seenMu.Unlock()
	out := []string{ps.id}
	for id, at := range ps.seen {
		if time.Since(at) < leaseTTL {
			out = append(out, id)
		}
	}
	return partition.SortedMembers(out)
}

// watchMembers follows the membership keys: a put renews a member, a
// delete (a worker that leaves) removes it; a member whose key expires
// drops out of members after leaseTTL without one. ready is closed once
// the keys already there were read. A watch that ends is started again.
func (ps *partitionSet) watchMembers(ctx context.Context, ready chan<- struct{}) {
	once := sync.Once{}
	defer once.Do(func() { close(ready) })
	for ctx.Err() == nil {
		w, err := ps.leases.Watch(ctx, "members.*")
		if err != nil {
			ps.log.Warn().Err(err).Msg("cannot watch the membership; trying again")
			select {
			case <-ctx.Done():
			case <-time.After(leaseRenew):
			}
			continue
		}
		for e := range w.Updates() {
			if e == nil {
				once.Do(func() { close(ready) })
				continue
			}
			id := strings.TrimPrefix(e.Key(), "members.")
			ps.seenMu.Lock()
			if e.Operation() == jetstream.KeyValuePut {
				ps.seen[id] = time.Now()
			} else {
				delete(ps.seen, id)
			}
			ps.seenMu.Unlock()
		}
		_ = w.Stop()
	}
}

// acquire takes partition p's lease: free, or left by this worker's last
// run (same id).
func (ps *partitionSet) acquire(ctx context.Context, p int) (uint64, error) {
	rev, err := ps.leases.Create(ctx, leaseKey(p), []byte(ps.id))
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return rev, err
	}
	e, gerr := ps.leases.Get(ctx, leaseKey(p))
	if gerr != nil || string(e.Value()) != ps.id {
		return 0, err
	}
	return ps.leases.Update(ctx, leaseKey(p), []byte(ps.id), e.Revision())
}

// take starts serving partition p under the lease of revision rev.
func (ps *partitionSet) take(ctx context.Context, p int, rev uint64) {
	pctx, stop := context.WithCancel(ctx)
	pt := &part{p: p, rev: rev, stop: stop, done: make(chan struct{}), started: make(chan struct{}), snapAt: time.Now()}
	ps.mu.Lock()
	ps.held[p] = pt
	ps.mu.Unlock()
	ps.log.Info().Int("partition", p).Str("worker_id", ps.id).Msg("partition taken: loading its state")
	ps.w.metrics.Failover("taken")
	ps.wg.Go(func() {
		defer close(pt.done)
		err := ps.serve(pctx, pt)
		if err != nil && pctx.Err() == nil {
			ps.log.Error().Err(err).Int("partition", p).Msg("partition stopped; letting go of it")
			var f fatal
			if errors.As(err, &f) {
				select {
				case ps.fatal <- f.error:
				default:
				}
			}
		}
		ps.finish(pt)
		ps.mu.Lock()
		delete(ps.held, p)
		lost := pt.leaseLost
		ps.mu.Unlock()
		if !lost {
			ps.dropLease(pt)
		}
	})
}

// release lets go of a partition: its consumer finishes what it has in hand,
// a snapshot is written, the lease is deleted and the consumer unpinned, so
// the next owner starts at once.
func (ps *partitionSet) release(pt *part, why string) {
	ps.mu.Lock()
	pt.stopping = true
	ps.mu.Unlock()
	ps.log.Info().Int("partition", pt.p).Str("why", why).Msg("letting go of the partition")
	ps.w.metrics.Failover("released")
	pt.stop()
}

// dropLease deletes the lease (if it is still ours) and unpins the
// partition's consumer.
func (ps *partitionSet) dropLease(pt *part) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = ps.leases.Delete(ctx, leaseKey(pt.p), jetstream.LastRevision(pt.rev))
	if err := ps.stream.UnpinConsumer(ctx, topology.PartitionConsumerName(pt.p), topology.PriorityGroup); err != nil {
		ps.log.Debug().Err(err).Int("partition", pt.p).Msg("unpin")
	}
}

// leave lets go of every partition and leaves the membership.
func (ps *partitionSet) leave() {
	for _, pt := range ps.parts() {
		pt.stop()
	}
	ps.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = ps.leases.Delete(ctx, memberKey(ps.id))
}

// serve loads partition pt's state, catches up with the stream, and then
// consumes its commands until ctx ends.
func (ps *partitionSet) serve(ctx context.Context, pt *part) error {
	w, log := ps.w, ps.log.With().Int("partition", pt.p).Logger()
	snapApplied, err := ps.loadSnapshot(ctx, pt.p, log)
	if err != nil {
		return err
	}
	store, err := storage.Open(ps.storePath(pt.p), storage.Options{Timeout: w.cfg.StoreTimeout, NoSync: w.cfg.NoSync})
	if err != nil {
		return err
	}
	pt.store = store
	var applied uint64
	if err := store.View(func(tx *storage.Tx) error { applied = tx.AppliedSeq(); return nil }); err != nil {
		return err
	}
	pt.snapMu.Lock()
	pt.snapApplied = snapApplied
	pt.snapMu.Unlock()
	if applied < ps.legacyUntil {
		return fatal{fmt.Errorf("the partition's state has applied the stream up to %d, but the stream held commands up to %d "+
			"before it was partitioned, and no snapshot covers them: start the worker that holds the data directory of "+
			"the version before (its %s is migrated at start) first", applied, ps.legacyUntil, StoreFile)}
	}
	cons, err := ps.stream.Consumer(ctx, topology.PartitionConsumerName(pt.p))
	if err != nil {
		return fmt.Errorf("consumer %s: %w", topology.PartitionConsumerName(pt.p), err)
	}
	if err := ps.checkGap(ctx, cons, applied, log); err != nil {
		return err
	}
	pt.applier = &command.Applier{Store: store, Verifier: w.verifier, Keys: w.keys.history, Retention: w.cfg.Retention, Log: log}
	caught, err := handler.CatchUp(ctx, w.reader, pt.applier, partition.Filter(pt.p), applied, w.cfg.MaxBatch, retry.Wait, log, nil)
	if err != nil {
		return err
	}
	if caught.Read > 0 {
		log.Info().Int("applied", caught.Read).Uint64("applied_seq", caught.ToSeq).Msg("caught up with the stream")
		applied = caught.ToSeq
	}
	pt.cons = cons
	pt.events = handler.NewEventPublisher(w.eventsJS, store, log, w.metrics)
	pt.events.Hold = w.cfg.HoldEvents
	sub, err := w.service.ServeInternal(pt.p, store)
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
		Conn:          w.nc,
		Log:           log,
		MaxBatch:      w.cfg.MaxBatch,
		StoreRetry:    retry.Wait,
		PriorityGroup: topology.PriorityGroup,
		Order:         &handler.OrderGuard{Reader: w.reader, Filter: partition.Filter(pt.p), Applied: applied},
		Observer:      handler.Observers{w.metrics, w.answers, w.writes},
	}
	// The lease is ours, so whoever held the pin before lost it or let go:
	// unpin, so that this worker's pulls are served now, not once the old
	// pin times out (PinnedTTL). Were the old owner still pulling, both
	// would apply the same commands alike for a moment.
	uctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	if err := ps.stream.UnpinConsumer(uctx, topology.PartitionConsumerName(pt.p), topology.PriorityGroup); err != nil {
		log.Debug().Err(err).Msg("unpin before consuming")
	}
	cancel()
	pt.serving.Store(true)
	close(pt.started)
	defer pt.serving.Store(false)
	log.Info().Uint64("applied_seq", applied).Str("worker_id", ps.id).Msg("serving the partition")
	return consumer.Run(ctx, cons)
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
	if !ps.w.cfg.AllowStoreGap {
		return fatal{errors.New(msg + "; restore a newer backup, or start with --allow-store-gap to accept the loss")}
	}
	log.Error().Msg(msg + "; going on as --allow-store-gap says")
	return nil
}

// finish ends a part: a last snapshot when it applied anything since the
// last one, then its store is closed.
func (ps *partitionSet) finish(pt *part) {
	if pt.store == nil {
		return
	}
	if ps.snaps != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := ps.snapshot(ctx, pt); err != nil {
			ps.log.Warn().Err(err).Int("partition", pt.p).Msg("could not write the partition's snapshot while letting go of it")
		}
		cancel()
	}
	if err := pt.store.Close(); err != nil {
		ps.log.Warn().Err(err).Int("partition", pt.p).Msg("close store")
	}
}

// snapshotInterval is how often a partition's snapshot is written, when it
// applied anything since the last one.
const snapshotInterval = time.Minute

// snapshotLoop writes the partition's snapshot every snapshotInterval
// while it changes.
func (ps *partitionSet) snapshotLoop(ctx context.Context, pt *part, log zerolog.Logger) {
	if ps.snaps == nil {
		return
	}
	tick := time.NewTicker(ps.w.snapshotEvery())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := ps.snapshot(ctx, pt); err != nil && ctx.Err() == nil {
			ps.failures.Add(1)
			log.Error().Err(err).Dur("snapshot_age", time.Since(pt.snapAge())).
				Msg("could not write the partition's snapshot: a worker that takes it over must apply more of the stream, and once the stream's MaxAge passes it cannot")
		}
	}
}

func (pt *part) snapAge() time.Time {
	pt.snapMu.Lock()
	defer pt.snapMu.Unlock()
	return pt.snapAt
}

// snapshot copies the partition's store to a local file (one read
// transaction, no network) and uploads the file to the snapshot bucket,
// with the stream sequence it has applied.
func (ps *partitionSet) snapshot(ctx context.Context, pt *part) error {
	pt.snapMu.Lock()
	defer pt.snapMu.Unlock()
	var applied uint64
	if err := pt.store.View(func(tx *storage.Tx) error { applied = tx.AppliedSeq(); return nil }); err != nil {
		return err
	}
	if applied == pt.snapApplied {
		pt.snapAt = time.Now() // nothing new: the last snapshot is the state
		return nil
	}
	tmp := ps.storePath(pt.p) + ".snapshot"
	defer os.Remove(tmp)
	// Copied under the transaction that read applied: the file holds
	// exactly that state.
	err := storage.WriteFileAtomic(tmp, func(f io.Writer) error {
		_, err := pt.store.BackupApplied(f, &applied)
		return err
	})
	if err != nil {
		return fmt.Errorf("snapshot: copy the store: %w", err)
	}
	if applied == pt.snapApplied {
		pt.snapAt = time.Now()
		return nil
	}
	if err := ps.uploadFile(ctx, pt.p, tmp, applied); err != nil {
		return fmt.Errorf("snapshot: upload: %w", err)
	}
	pt.snapApplied, pt.snapAt = applied, time.Now()
	ps.log.Debug().Int("partition", pt.p).Uint64("applied_seq", applied).Msg("snapshot written")
	return nil
}

// loadSnapshot replaces the partition's local store with the newest
// snapshot when that has applied more of the stream (or there is no local
// store): a worker takes a partition over with no operator step, even on an
// empty data directory.
func (ps *partitionSet) loadSnapshot(ctx context.Context, p int, log zerolog.Logger) (uint64, error) {
	if ps.snaps == nil {
		return 0, nil
	}
	info, err := ps.snaps.GetInfo(ctx, partition.Name(p))
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("snapshot of %s: %w", partition.Name(p), err)
	}
	snapApplied, _ := strconv.ParseUint(info.Metadata[snapshotMetaApplied], 10, 64)
	path := ps.storePath(p)
	var local uint64
	if _, err := os.Stat(path); err == nil {
		s, err := storage.Open(path, storage.Options{Timeout: ps.w.cfg.StoreTimeout})
		if err != nil {
			return 0, err
		}
		err = s.View(func(tx *storage.Tx) error { local = tx.AppliedSeq(); return nil })
		s.Close()
		if err != nil {
			return 0, err
		}
	}
	if snapApplied <= local {
		return snapApplied, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return 0, err
	}
	tmp := path + ".loading"
	defer os.Remove(tmp)
	err = storage.WriteFileAtomic(tmp, func(f io.Writer) error {
		obj, err := ps.snaps.Get(ctx, partition.Name(p))
		if err != nil {
			return err
		}
		defer obj.Close()
		_, err = io.Copy(f, obj)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("load snapshot of %s: %w", partition.Name(p), err)
	}
	s, err := storage.Open(tmp, storage.Options{Timeout: time.Second})
	if err != nil {
		return 0, fmt.Errorf("snapshot of %s does not open: %w", partition.Name(p), err)
	}
	s.Close()
	if err := os.Rename(tmp, path); err != nil {
		return 0, err
	}
	log.Info().Uint64("local_applied_seq", local).Uint64("snapshot_applied_seq", snapApplied).
		Msg("partition state loaded from its snapshot")
	return snapApplied, nil
}

// servedStore is partition p's store when this worker serves it.
func (ps *partitionSet) servedStore(p int) (*storage.Store, bool) {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	if pt := ps.held[p]; pt != nil && pt.serving.Load() {
		return pt.store, true
	}
	return nil, false
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
	for _, pt := range ps.parts() {
		if !pt.serving.Load() {
			continue
		}
		st := partitionStatus{Partition: pt.p, SnapshotAgeSecs: time.Since(pt.snapAge()).Seconds()}
		_ = pt.store.View(func(tx *storage.Tx) error { st.AppliedSeq = tx.AppliedSeq(); return nil })
		pt.snapMu.Lock()
		st.SnapshotSeq = pt.snapApplied
		pt.snapMu.Unlock()
		served = append(served, st)
	}
	slices.SortFunc(served, func(a, b partitionStatus) int { return a.Partition - b.Partition })
	return map[string]any{"workerId": ps.id, "partitions": ps.n, "served": served}
}
