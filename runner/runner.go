// Package runner runs the partitions this worker holds: for each lease the
// ownership coordinator hands it, it loads the partition's state (its
// newest snapshot, its own store, the stream after them), serves it (the
// partition's handler consumes its commands, the service answers its
// reads) while the lease is valid, and lets go of it (finishes what it has
// in hand, writes a snapshot while the lease still holds).
package runner

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/metrics"
	"github.com/passkeys/worker/outbox"
	"github.com/passkeys/worker/ownership"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/service"
	"github.com/passkeys/worker/snapshot"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
)

// Dir is where the partitions' stores live inside the data directory, one
// bbolt file each (partition.Name + ".db").
const Dir = "partitions"

// StorePath is the file of partition p's store in dataDir.
func StorePath(dataDir string, p int) string {
	return filepath.Join(dataDir, Dir, partition.Name(p)+".db")
}

// Options are how the partitions are run, as the worker is told.
type Options struct {
	MaxBatch int // most commands applied in one store transaction
	// SnapshotInterval is how often a changed partition's snapshot is
	// written, SnapshotChanges how many commands it applies before, at the
	// latest (zero or less: DefaultSnapshotInterval and
	// DefaultSnapshotChanges).
	SnapshotInterval time.Duration
	SnapshotChanges  int
	StoreTimeout     time.Duration // how long to wait for another process's lock on a store
	AllowStoreGap    bool          // start even when a restored store misses commands the stream no longer holds
	// StoreNoSync commits the stores without fsync (--store-nosync;
	// storage.Options.NoSync): the stream and the snapshots keep what was
	// confirmed, and load rebuilds a store that was not closed. Sound only
	// while every command stays in the stream as long as its outcome:
	// rules version 2 in force (trust.RulesVersion), which refuses
	// commands with Nats-TTL.
	StoreNoSync bool
}

// Config is what a Set runs partitions with: the worker's settings and the
// parts it shares with the rest of the worker.
type Config struct {
	ID string // the member id (ownership.MemberID)
	// Settings are the worker's: its partitions, the outcome retention,
	// the events stream's duplicate window.
	topology.Settings
	Options
	DataDir string
	// LegacyUntil is the stream's MetaLegacyUntil: a partition's state must
	// have applied that far before it may serve.
	LegacyUntil uint64
	// NoEarlyAnswers switches the early answers off (handler.EarlyAnswers
	// and the order check's): the fault campaign's measure of them.
	NoEarlyAnswers bool

	Leases jetstream.KeyValue
	// BucketTTL is the lease bucket's TTL as it says (topology.Handles.LeaseTTL),
	// which leases are held by; Settings.LeaseTTL is only what a new bucket
	// would be made with.
	BucketTTL time.Duration
	Conn      *nats.Conn
	Stream    jetstream.Stream
	Reader    *jsread.Reader // reads stream PASSKEYS
	EventsJS  jetstream.JetStream
	// EventsRead reads stream PASSKEYS_EVENTS: whether an old event of an
	// outbox was published already.
	EventsRead *jsread.Reader
	Verifier   *auth.Verifier
	Snapshots  *snapshot.Store
	Metrics    *metrics.Metrics
	Observer   handler.Observer
	// Tracer, when set, records the partitions' spans (handler.Processor,
	// outbox.Publisher).
	Tracer trace.Tracer
	Log    zerolog.Logger
	// ServeInternal answers, from held's store, the other workers'
	// questions about partition p while this worker serves it, until the
	// subscription it returns is ended (service.Endpoints.ServeInternal).
	ServeInternal func(p int, held service.PartitionStore) (*nats.Subscription, error)
}

// Set runs the partitions this worker holds.
type Set struct {
	cfg   Config
	coord *ownership.Coordinator

	mu sync.RWMutex
	// running holds every partition between its lease's grant and its
	// letting go, loading and stopping ones included; Serving lists those
	// that serve.
	running map[int]*part
	// unrecoverable holds the partitions whose state could not be rebuilt
	// here (the stream no longer holds commands the state misses), with
	// why, until one is served.
	unrecoverable map[int]error
	snapFailures  atomic.Int64 // snapshots that could not be written
	snapBytes     atomic.Int64 // bytes of the snapshots written
	// transfers lets one snapshot upload or download run at a time:
	// several large uploads at once are refused by the server (429, too
	// many requests), and several downloads at once overrun the
	// connection's pending limit (the server cuts it as a slow consumer).
	transfers chan struct{}
}

// part is one partition this worker holds.
type part struct {
	p     int
	lease *ownership.Lease
	store *storage.Store
	// partition applies the partition's commands to store, and knows
	// what was applied; nil until the load has checked the store.
	partition *handler.Partition
	events    *outbox.Publisher
	cons      jetstream.Consumer
	early     *handler.EarlyAnswers // owed since the catch-up (load), sent by serve

	snapMu      sync.Mutex
	snapApplied uint64    // applied sequence of the newest snapshot known
	snapAt      time.Time // when it was written or checked, or when the part started
	checkedAt   time.Time // when the bucket's newest was last looked at
}

// New returns the Set of cfg; Join and Run start it. Its error is
// ownership.New's: a lease bucket whose TTL leaves no safe hold.
func New(cfg Config) (*Set, error) {
	if cfg.SnapshotInterval <= 0 {
		cfg.SnapshotInterval = DefaultSnapshotInterval
	}
	if cfg.SnapshotChanges <= 0 {
		cfg.SnapshotChanges = DefaultSnapshotChanges
	}
	s := &Set{cfg: cfg, running: map[int]*part{}, unrecoverable: map[int]error{}, transfers: make(chan struct{}, 1)}
	var err error
	s.coord, err = ownership.New(cfg.Leases, ownership.Config{ID: cfg.ID, Partitions: cfg.Partitions, TTL: cfg.BucketTTL}, s.run, cfg.Log)
	return s, err
}

// Join makes this worker a member (ownership.Coordinator.Join); Run then
// takes and serves partitions until ctx ends.
func (s *Set) Join(ctx context.Context) error { return s.coord.Join(ctx) }

// Run serves until ctx ends (ownership.Coordinator.Run).
func (s *Set) Run(ctx context.Context) error { return s.coord.Run(ctx) }

// serving lists the parts this worker serves now: caught up, consuming,
// under a valid lease.
func (s *Set) serving() []*part {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*part, 0, len(s.running))
	for _, pt := range s.running {
		if pt.lease.Serving() {
			out = append(out, pt)
		}
	}
	slices.SortFunc(out, func(a, b *part) int { return a.p - b.p })
	return out
}

// servingPart is partition p's part when this worker serves it.
func (s *Set) servingPart(p int) (*part, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	pt := s.running[p]
	return pt, pt != nil && pt.lease.Serving()
}

// Local is the store of userID's partition when this worker serves it,
// and how to tell whether it still does once the store was read: the
// service's Router.
func (s *Set) Local(userID string) (service.PartitionStore, int, bool) {
	p := partition.Of(userID, s.cfg.Partitions)
	pt, ok := s.servingPart(p)
	if !ok {
		return service.PartitionStore{}, p, false
	}
	return service.PartitionStore{Store: pt.store, Valid: pt.lease.Serving}, p, true
}

// Store is partition p's store while this worker serves it.
func (s *Set) Store(p int) (*storage.Store, bool) {
	pt, ok := s.servingPart(p)
	if !ok {
		return nil, false
	}
	return pt.store, true
}

// Serving lists the partitions this worker serves, in order.
func (s *Set) Serving() []int {
	var out []int
	for _, pt := range s.serving() {
		out = append(out, pt.p)
	}
	return out
}

// Unrecoverable lists the partitions whose state could not be rebuilt
// here, with why.
func (s *Set) Unrecoverable() map[int]error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return maps.Clone(s.unrecoverable)
}

// AwaitFirstRound waits until the partitions taken in the first round are
// served or given up on, at most wait.
func (s *Set) AwaitFirstRound(ctx context.Context, wait time.Duration) {
	select {
	case <-s.coord.FirstRound():
	case <-ctx.Done():
		return
	}
	deadline := time.Now().Add(wait)
	for _, l := range s.coord.Leases() {
		for !l.Serving() && l.Context().Err() == nil {
			if time.Now().After(deadline) {
				s.cfg.Log.Warn().Dur("waited", wait).Msg("answering requests before every partition taken is served")
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
func (s *Set) run(l *ownership.Lease) error {
	pt := &part{p: l.Partition, lease: l, snapAt: time.Now()}
	log := s.cfg.Log.With().Int("partition", pt.p).Logger()
	s.mu.Lock()
	s.running[pt.p] = pt
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.running, pt.p)
		s.mu.Unlock()
	}()
	s.cfg.Metrics.PartitionChange("taken")
	defer s.cfg.Metrics.PartitionChange("released")
	ctx := l.Context()
	err := s.load(ctx, pt, log)
	s.noteRecoverable(pt.p, err, log)
	if err == nil {
		err = s.serve(ctx, pt, log)
		if err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Msg("stopped serving the partition")
		}
	}
	s.letGo(pt, log)
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

// noteRecoverable files whether partition p's state could be loaded: one
// that cannot be rebuilt (err is unrecoverable) is reported until a load
// succeeds.
func (s *Set) noteRecoverable(p int, err error, log zerolog.Logger) {
	var u unrecoverable
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case errors.As(err, &u):
		s.unrecoverable[p] = u.error
		log.Error().Err(u.error).Msg("PARTITION CANNOT BE REBUILT: it is not served; the worker's other partitions go on")
	case err == nil:
		delete(s.unrecoverable, p)
	}
}

// serve consumes the partition's commands and answers its reads until ctx
// ends.
func (s *Set) serve(ctx context.Context, pt *part, log zerolog.Logger) error {
	applied := pt.partition.Applied()
	pt.events = outbox.New(s.cfg.EventsJS, pt.store, log, s.cfg.Metrics)
	pt.events.Tracer = s.cfg.Tracer
	pt.events.Published, pt.events.Dedup = s.cfg.EventsRead, s.cfg.EventsDuplicates
	sub, err := s.cfg.ServeInternal(pt.p, service.PartitionStore{Store: pt.store, Valid: pt.lease.Serving})
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	published := make(chan struct{})
	go func() { defer close(published); pt.events.Run(ctx) }()
	defer func() { <-published }()
	snapped := make(chan struct{})
	go func() { defer close(snapped); s.snapshotLoop(ctx, pt, log) }()
	defer func() { <-snapped }()

	proc := &handler.Processor{
		Committed:     pt.events.Wake,
		Partition:     pt.partition,
		Conn:          s.cfg.Conn,
		Log:           log,
		Wait:          retry.Wait,
		PriorityGroup: topology.PriorityGroup,
		Observer:      s.cfg.Observer,
		Tracer:        s.cfg.Tracer,
		NoEarlyAnswer: s.cfg.NoEarlyAnswers,
	}
	// The lease is ours, so whoever held the pin before lost it or let go:
	// unpin, so that this worker's pulls are served now, not once the old
	// pin times out (PinnedTTL). Were the old owner still pulling, both
	// would apply the same commands alike for a moment.
	s.unpin(ctx, pt.p, log)
	pt.lease.SetServing(true)
	defer pt.lease.SetServing(false)
	log.Info().Uint64("applied_seq", applied).Str("worker_id", s.cfg.ID).Msg("serving the partition")
	if pt.early != nil {
		pt.early.Send(s.cfg.Conn, pt.lease.Check, s.cfg.Observer.AnsweredEarly, log)
	}
	pt.early = nil
	return proc.Run(ctx, pt.cons)
}

// letGoSnapshotWait is how long a worker letting go of a partition
// tries to write its snapshot (when its state is ahead of the newest),
// while nobody serves the partition (a worker that takes it over does
// without: an older snapshot and more of the stream). One that waited on a NATS node that
// was down held a partition for 30 s in an external fault test (the bound
// was 30 s then); a snapshot at let-go only shortens the next holder's
// catch-up. An upload cut short leaves its chunks in the object store
// (nats.go cleans them up with the context that ran out).
const letGoSnapshotWait = 15 * time.Second

// letGo ends a part: a last snapshot while the lease is still held, the
// consumer unpinned for the next owner, the store closed.
func (s *Set) letGo(pt *part, log zerolog.Logger) {
	if pt.store == nil {
		return
	}
	if pt.lease.Valid() && pt.partition != nil {
		ctx, cancel := context.WithTimeout(context.Background(), letGoSnapshotWait)
		if err := s.snapshot(ctx, pt); err != nil {
			log.Warn().Err(err).Msg("could not write the partition's snapshot while letting go of it")
		}
		cancel()
		s.unpin(context.Background(), pt.p, log)
	}
	if err := pt.store.Close(); err != nil {
		log.Warn().Err(err).Msg("close store")
	}
}
