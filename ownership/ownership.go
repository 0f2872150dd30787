// Package ownership decides which worker serves which partition, and
// tells a partition's runner when it may run. Each worker keeps a
// membership key (members.<worker id>) in the lease bucket and follows the
// others'; every worker computes the same assignment of partitions to the
// live members (partition.OwnedAvoiding); a worker takes a partition it is
// given once its lease (partitions.<n>) is free, renews it while it holds
// it, and lets go of those it is no longer given.
//
// A lease is only as good as the holder's own monotonic clock says: a
// runner gets a Lease whose Valid it checks right before it acts, and
// whose Context ends the moment the lease is in doubt. Two processes that
// claim one worker id (a copied data directory) are told apart by an
// incarnation of their own: the later one refuses to start while the other
// is alive, and one that finds its membership taken over stops.
package ownership

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/clock"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/topology"
)

// Config tunes a Coordinator; zero fields take the defaults.
type Config struct {
	// ID is this worker's member id (its data directory's worker-id).
	ID string
	// Partitions is how many partitions there are.
	Partitions int
	// Renew is how often membership and leases are renewed. Zero: a third
	// of the bucket's TTL, at most 2 s, following the TTL when it changes.
	Renew time.Duration
	// TTL is the lease bucket's TTL, as the bucket says
	// (topology.Handles.LeaseTTL): required.
	TTL time.Duration
	// Margin is taken off the bucket's TTL: a lease is held until its last
	// renewal was sent plus TTL less Margin. Zero: a sixth of the TTL, at
	// most 1 s, following the TTL.
	Margin time.Duration
	// StuckAfter lets go of a partition whose runner showed no progress
	// for this long while loading it (30 s).
	StuckAfter time.Duration
	// Avoid is how long a worker avoids a partition whose runner failed or
	// was stuck (1 minute): the others take it if they have room.
	Avoid time.Duration
	// RetryAlone is how soon a worker tries again a partition it avoids
	// when every live member avoids it too, a lone worker included (5 s):
	// a partition nobody else would serve is never left unserved for the
	// whole Avoid.
	RetryAlone time.Duration
}

func (c *Config) defaults() {
	c.StuckAfter = cmp.Or(c.StuckAfter, 30*time.Second)
	c.Avoid = cmp.Or(c.Avoid, time.Minute)
	c.RetryAlone = cmp.Or(c.RetryAlone, 5*time.Second)
}

// Runner serves partition l.Partition while l.Context lasts. When the
// context ends because the worker lets go (ErrReleased) the lease is still
// held: the runner finishes what it has in hand and writes its snapshot,
// checking l.Valid before each step; when it ends because the lease is in
// doubt, the runner stops at once. An error means the partition could not
// be served here (the coordinator avoids it for a while).
type Runner func(l *Lease) error

// ErrDuplicate tells that another process runs with this worker's id.
var ErrDuplicate = errors.New("another worker process runs with this worker id")

// member is a membership key's value.
type member struct {
	Incarnation string `json:"incarnation"`
	// Avoids are the partitions that failed on this worker lately.
	Avoids []int `json:"avoids,omitempty"`
}

// seenMember is what the watch last saw of a member.
type seenMember struct {
	at     clock.Instant // when its key was last put
	avoids []int
}

// Coordinator keeps this worker's membership and leases.
type Coordinator struct {
	kv  jetstream.KeyValue
	cfg Config
	run Runner
	log zerolog.Logger
	// ttl is the bucket's TTL as last read, hold how long a renewal holds
	// a lease (ttl less the margin), renew how often they are renewed, all
	// in nanoseconds: followTTL keeps them (timing).
	ttl, hold, renewEvery atomic.Int64
	// ttlRead is false from joining a bucket afresh (perhaps made again,
	// with another TTL) until its TTL has been read: no lease is taken
	// meanwhile, and a renewal holds for no longer than the shortest TTL
	// a bucket may have (safeHold).
	ttlRead atomic.Bool

	incarnation string
	memberRev   atomic.Uint64 // the revision of this worker's membership key

	mu     sync.Mutex
	leases map[int]*Lease
	avoid  map[int]time.Time // partitions this worker avoids until then
	seen   map[string]seenMember
	dup    error // set by the watch when another incarnation puts this id

	firstRound chan struct{}
	wake       chan struct{}
	rewatch    chan struct{} // the membership joined again: watch it afresh

	// Since when the membership's renewals have found the bucket silent,
	// and when the operator was last told (renewMembership's goroutine
	// only).
	silentSince, silentTold time.Time
	// noTakeUntil (a clock.Instant) is when this worker may take leases
	// again after it joined a bucket afresh.
	noTakeUntil atomic.Int64
}

// New returns a coordinator of the lease bucket kv that runs run for each
// partition it holds. It refuses a bucket whose TTL leaves no safe hold:
// one under topology.MinLeaseTTL, one that two renewals do not fit into (a
// renewal lost to a slow server would lose the lease), or none at all.
func New(kv jetstream.KeyValue, cfg Config, run Runner, log zerolog.Logger) (*Coordinator, error) {
	cfg.defaults()
	renew, hold := cfg.timing(cfg.TTL)
	if cfg.TTL < topology.MinLeaseTTL || hold < 2*renew {
		return nil, fmt.Errorf("key-value bucket %s has a TTL of %v: too short to hold a lease renewed every %v "+
			"(at least %v); make it again with a longer TTL (`worker provision --reset-leases --lease-ttl`)",
			topology.LeaseBucket, cfg.TTL, renew, max(topology.MinLeaseTTL, 2*renew+cfg.TTL-hold))
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	c := &Coordinator{kv: kv, cfg: cfg, run: run, log: log,
		incarnation: hex.EncodeToString(b[:]), leases: map[int]*Lease{}, avoid: map[int]time.Time{},
		seen: map[string]seenMember{}, firstRound: make(chan struct{}), wake: make(chan struct{}, 1), rewatch: make(chan struct{}, 1)}
	c.ttl.Store(int64(cfg.TTL))
	c.hold.Store(int64(hold))
	c.renewEvery.Store(int64(renew))
	c.ttlRead.Store(true)
	return c, nil
}

// timing is how often leases are renewed and how long a renewal holds one
// under a bucket TTL of ttl: Renew and Margin where set, else a third and
// a sixth of it, at most 2 s and 1 s.
func (cfg *Config) timing(ttl time.Duration) (renew, hold time.Duration) {
	renew = cmp.Or(cfg.Renew, min(2*time.Second, ttl/3))
	return renew, ttl - cmp.Or(cfg.Margin, min(time.Second, ttl/6))
}

// safeHold is the longest a renewal may hold a lease while the bucket's
// TTL is not known (ttlRead false): the hold under the shortest TTL a
// worker takes, which every bucket's TTL is at least.
func (cfg *Config) safeHold() time.Duration {
	_, hold := cfg.timing(topology.MinLeaseTTL)
	return hold
}

// renew is how often membership and leases are renewed now.
func (c *Coordinator) renew() time.Duration { return time.Duration(c.renewEvery.Load()) }

// holdNow is how long a renewal sent now holds a lease.
func (c *Coordinator) holdNow() time.Duration {
	hold := time.Duration(c.hold.Load())
	if !c.ttlRead.Load() {
		hold = min(hold, c.cfg.safeHold())
	}
	return hold
}

// followTTL reads the bucket's TTL again, each membership round, with a
// renewal's time of its own: a bucket made again (worker provision
// --reset-leases), or set by a worker of another build, may have another.
// The renewals follow it (timing); a shorter one shortens the leases held
// now at once, a longer one counts from their next renewal.
func (c *Coordinator) followTTL(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, c.renew())
	defer cancel()
	st, err := c.kv.Status(ctx)
	if err != nil || st.TTL() <= 0 {
		return // read again next round; until then, ttlRead stays as it was
	}
	ttl := st.TTL()
	old := time.Duration(c.ttl.Swap(int64(ttl)))
	if old != ttl {
		renew, hold := c.cfg.timing(ttl)
		c.hold.Store(int64(hold))
		c.renewEvery.Store(int64(renew))
		ev := c.log.Warn()
		if ttl < topology.MinLeaseTTL || hold < 2*renew {
			ev = c.log.Error() // leases may run out between renewals: partitions move, nothing is held twice
		}
		ev.Dur("ttl", ttl).Dur("was", old).Dur("renew", renew).Msg("the lease bucket's TTL changed; leases are held and renewed by the new one")
		if ttl < old {
			c.shortenAll(hold)
		}
	}
	c.ttlRead.Store(true)
}

// shortenAll brings the end of every lease held forward to its last
// renewal plus hold, where that is sooner.
func (c *Coordinator) shortenAll(hold time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.leases {
		l.shorten(hold)
	}
}

func memberKey(id string) string { return "members." + id }
func leaseKey(p int) string      { return "partitions." + strconv.Itoa(p) }

// Join makes this process the member of its worker id. A membership put by
// another process of the same id that is still renewed is a duplicate
// (ErrDuplicate); one that is no longer renewed (this worker's previous
// run, killed) is waited out, at most the bucket's TTL. A bucket that does
// not answer (a JetStream cluster still electing its leaders after every
// node restarted) is asked again for up to JoinWait, not given up on at
// once: the fault campaign's workers exited here after a power cut of
// every machine.
func (c *Coordinator) Join(ctx context.Context) error {
	key := memberKey(c.cfg.ID)
	deadline := time.Now().Add(JoinWait)
	for {
		err := c.join(ctx, key)
		if err == nil || ctx.Err() != nil || !transient(err) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w; %s", err, silentBucket(JoinWait))
		}
		c.log.Warn().Err(err).Str("worker_id", c.cfg.ID).Msg("could not join the workers yet; trying again")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// JoinWait bounds how long Join asks a bucket that does not answer.
const JoinWait = 2 * time.Minute

// silentBucket is what a worker tells the operator when the lease bucket
// has not answered for d: the state NATS can leave a bucket in after its
// nodes restart (docs/reliability.md), and the way out.
func silentBucket(d time.Duration) string {
	return fmt.Sprintf("the lease bucket %s has not answered for %v: if `nats stream info KV_%s` shows no leader "+
		"while the other streams have one (a NATS fault, nats-server issue 5205), run `worker provision --reset-leases` "+
		"(docs/operations.md)", topology.LeaseBucket, d, topology.LeaseBucket)
}

// transient tells whether err is a bucket that did not answer (yet): a
// time-out, no responders, or JetStream unavailable. A permission
// violation or a missing bucket is not waited for.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || (errors.As(err, &apiErr) && apiErr.Code == 503)
}

// join is one attempt of Join's.
func (c *Coordinator) join(ctx context.Context, key string) error {
	for {
		gctx, cancel := context.WithTimeout(ctx, c.renew())
		e, err := c.kv.Get(gctx, key)
		cancel()
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			cctx, cancel := context.WithTimeout(ctx, c.renew())
			rev, err := c.kv.Create(cctx, key, c.memberValue())
			cancel()
			if err == nil {
				c.memberRev.Store(rev)
				return nil
			}
			if !errors.Is(err, jetstream.ErrKeyExists) {
				return fmt.Errorf("join as member %s: %w", c.cfg.ID, err)
			}
			continue // another process of this id came first: look at it
		case err != nil:
			return fmt.Errorf("join as member %s: %w", c.cfg.ID, err)
		}
		var m member
		if json.Unmarshal(e.Value(), &m) == nil && m.Incarnation == c.incarnation {
			// An earlier attempt's create was stored, its answer lost.
			c.memberRev.Store(e.Revision())
			return nil
		}
		if err := c.waitOut(ctx, key, e.Revision()); err != nil {
			return err
		}
	}
}

// waitOut waits until the membership of revision rev, another process's,
// expires (it was not renewed: that process is gone), or is renewed (it is
// alive: ErrDuplicate).
func (c *Coordinator) waitOut(ctx context.Context, key string, rev uint64) error {
	c.log.Warn().Str("worker_id", c.cfg.ID).Msg("another process was this worker's member lately; waiting to see whether it is gone")
	deadline := time.Now().Add(time.Duration(c.ttl.Load()) + c.renew())
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(c.renew() / 4):
		}
		gctx, cancel := context.WithTimeout(ctx, c.renew())
		e, err := c.kv.Get(gctx, key)
		cancel()
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			return nil
		case err != nil:
			continue
		case e.Revision() != rev:
			return fmt.Errorf("%w (%s): is its data directory a copy of this one? Give this one a new id by deleting its worker-id file, or stop the other", ErrDuplicate, c.cfg.ID)
		}
	}
	return nil
}

func (c *Coordinator) memberValue() []byte {
	raw, _ := json.Marshal(member{Incarnation: c.incarnation, Avoids: c.Avoided()})
	return raw
}

// FirstRound is closed after the first round of leases.
func (c *Coordinator) FirstRound() <-chan struct{} { return c.firstRound }

// Lease is the lease this worker holds on partition p, or nil.
func (c *Coordinator) Lease(p int) *Lease {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leases[p]
}

// Leases are the leases this worker holds, by partition.
func (c *Coordinator) Leases() []*Lease {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Lease, 0, len(c.leases))
	for _, l := range c.leases {
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b *Lease) int { return a.Partition - b.Partition })
	return out
}

// Avoided lists the partitions this worker avoids now, after they failed
// or were stuck on it.
func (c *Coordinator) Avoided() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for p, until := range c.avoid {
		if time.Now().Before(until) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// Run keeps membership and leases until ctx ends; then it lets go of every
// partition (each runner finishes what it has in hand and writes its
// snapshot, under a lease still renewed), deletes the leases and leaves the
// membership, so the others take over at once. It returns ErrDuplicate when
// another process took over this worker's membership.
func (c *Coordinator) Run(ctx context.Context) error {
	watched := make(chan struct{})
	wctx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWatch()
	go c.watchMembers(wctx, watched)
	select { // the members already there, before the first assignment
	case <-watched:
	case <-time.After(c.renew()):
	case <-ctx.Done():
	}
	every := c.renew()
	tick := time.NewTicker(every)
	defer tick.Stop()
	var dup error
	for first := true; ; first = false {
		if dup == nil {
			dup = c.renewMembership(context.WithoutCancel(ctx))
			if dup != nil {
				c.log.Error().Err(dup).Msg("stopping: this worker's id serves in another process")
			}
		}
		stopping := ctx.Err() != nil || dup != nil
		if stopping {
			for _, l := range c.Leases() {
				if l.release() {
					c.log.Info().Int("partition", l.Partition).Msg("letting go of the partition: the worker stops")
				}
			}
		}
		c.round(context.WithoutCancel(ctx), !stopping)
		if first {
			close(c.firstRound)
		}
		if stopping && len(c.Leases()) == 0 {
			if dup == nil {
				c.leave()
			}
			return dup
		}
		if r := c.renew(); r != every { // the bucket's TTL changed (followTTL)
			every = r
			tick.Reset(every)
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		case <-c.wake:
		}
	}
}

// round is one renewal of the leases after the membership's: the
// assignment, leases renewed, let go of or taken (take false: none taken,
// the worker stops). A membership that could not be renewed does not stop
// it: the leases are renewed as long as they can be, and run out when they
// cannot.
func (c *Coordinator) round(ctx context.Context, take bool) {
	want := map[int]bool{}
	for _, p := range partition.OwnedAvoiding(c.cfg.ID, c.members(), c.cfg.Partitions, c.avoids) {
		want[p] = true
	}
	// Each lease's renewal, and each take, on its own: one that waits for
	// a timeout holds up no other.
	var wg sync.WaitGroup
	for _, l := range c.Leases() {
		wg.Go(func() { c.tend(ctx, l, want[l.Partition]) })
	}
	wg.Wait()
	if !take {
		return
	}
	for p := range c.cfg.Partitions {
		if want[p] && c.Lease(p) == nil && c.mayTake(p) {
			wg.Go(func() { c.take(ctx, p) })
		}
	}
	wg.Wait()
}

// renewMembership puts this worker's membership key, on its revision: a
// revision that moved on means another process put it (ErrDuplicate), or it
// expired while this one was paused (it joins again).
func (c *Coordinator) renewMembership(ctx context.Context) error {
	c.mu.Lock()
	dup := c.dup
	c.mu.Unlock()
	if dup != nil {
		return dup
	}
	key := memberKey(c.cfg.ID)
	rctx, cancel := context.WithTimeout(ctx, c.renew())
	defer cancel()
	rev, err := c.kv.Update(rctx, key, c.memberValue(), c.memberRev.Load())
	if err == nil {
		c.memberRev.Store(rev)
		c.silentSince, c.silentTold = time.Time{}, time.Time{}
		c.followTTL(ctx)
		return nil
	}
	if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
		c.renewFailed(err)
		return nil
	}
	e, gerr := c.kv.Get(rctx, key)
	if gerr == nil {
		var m member
		if json.Unmarshal(e.Value(), &m) == nil && m.Incarnation != c.incarnation {
			return fmt.Errorf("%w (%s): it took over this worker's membership while this one was not renewing it", ErrDuplicate, c.cfg.ID)
		}
		c.memberRev.Store(e.Revision())
		return nil
	}
	if errors.Is(gerr, jetstream.ErrKeyNotFound) {
		rev, err := c.kv.Create(rctx, key, c.memberValue())
		if err == nil {
			c.memberRev.Store(rev)
			c.silentSince, c.silentTold = time.Time{}, time.Time{}
			// Take no lease for a TTL: were the bucket made again early (by
			// something that did not wait the TTL out, as worker provision
			// --reset-leases does), a lease of the old one may still be held.
			// Until its TTL is read, the bucket may be one made again with a
			// shorter TTL: nothing is taken, and the leases held are held
			// no longer than the shortest TTL allows (holdNow).
			prev := time.Duration(c.ttl.Load())
			c.ttlRead.Store(false)
			c.shortenAll(c.cfg.safeHold())
			c.followTTL(ctx)
			c.noTakeUntil.Store(int64(clock.Now().Add(max(prev, time.Duration(c.ttl.Load())) + time.Second)))
			c.log.Warn().Msg("membership had run out (a pause, or the bucket was made again); joined again")
			// A bucket made again (worker provision --reset-leases) starts
			// its sequences over, and a watch that goes on from the old
			// bucket's last sequence sees nothing until the new one gets
			// there: watch it afresh.
			select {
			case c.rewatch <- struct{}{}:
			default:
			}
		}
	}
	return nil
}

// renewFailed logs a membership that could not be renewed, and, once
// the bucket has not answered for JoinWait (and again every JoinWait),
// tells the operator what that may be.
func (c *Coordinator) renewFailed(err error) {
	now := time.Now()
	if c.silentSince.IsZero() || !transient(err) {
		c.silentSince = now
	}
	if silent := now.Sub(c.silentSince); silent >= JoinWait && now.Sub(c.silentTold) >= JoinWait {
		c.silentTold = now
		c.log.Error().Err(err).Msg(silentBucket(silent.Round(time.Second)))
		return
	}
	c.log.Warn().Err(err).Msg("could not renew membership; the leases run out unless it comes back")
}

// tend handles one held lease in a round: a runner that returned gives its
// lease back; one no longer wanted, or stuck while loading, is let go of;
// every other lease, those being let go of included, is renewed.
func (c *Coordinator) tend(ctx context.Context, l *Lease, wanted bool) {
	if l.finished() {
		c.drop(ctx, l)
		return
	}
	switch {
	case !wanted && l.release():
		c.log.Info().Int("partition", l.Partition).Str("why", "assigned to another worker").Msg("letting go of the partition")
	case !l.serving.Load() && l.sinceProgress() > c.cfg.StuckAfter && l.release():
		c.log.Warn().Int("partition", l.Partition).Dur("no_progress_for", c.cfg.StuckAfter).
			Msg("letting go of the partition: no progress while loading it; another worker may serve it")
		c.avoidFor(l.Partition)
	}
	if l.Check() != nil {
		return // run out or lost: a renewal could only bring it back on a bucket made again (Lease.renewed)
	}
	sent := clock.Now()
	rctx, cancel := context.WithTimeout(ctx, c.renew())
	defer cancel()
	rev, err := c.kv.Update(rctx, leaseKey(l.Partition), []byte(c.cfg.ID+"/"+c.incarnation), l.revision())
	switch {
	case err == nil:
		l.renewed(rev, sent, c.holdNow())
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists):
		c.log.Warn().Int("partition", l.Partition).Msg("lease lost: another worker holds the partition now, or it expired")
		l.loseIt()
	default:
		c.log.Warn().Err(err).Int("partition", l.Partition).Msg("could not renew the lease; it runs out unless a renewal gets through")
	}
}

// take takes partition p's lease if it is free and starts its runner.
func (c *Coordinator) take(ctx context.Context, p int) {
	sent := clock.Now()
	cctx, cancel := context.WithTimeout(ctx, c.renew())
	rev, err := c.kv.Create(cctx, leaseKey(p), []byte(c.cfg.ID+"/"+c.incarnation))
	cancel()
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			c.log.Warn().Err(err).Int("partition", p).Msg("could not take the partition's lease")
		}
		return
	}
	l := newLease(context.WithoutCancel(ctx), p, rev, sent, c.holdNow())
	c.mu.Lock()
	c.leases[p] = l
	c.mu.Unlock()
	c.log.Info().Int("partition", p).Str("worker_id", c.cfg.ID).Msg("partition taken: loading its state")
	go func() {
		defer close(l.done)
		l.err = c.run(l)
		select {
		case c.wake <- struct{}{}: // give the lease back at once
		default:
		}
	}()
}

// drop gives back the lease of a runner that returned: deleted on its
// revision while it is still held, so the next owner takes it at once. A
// runner that failed has its partition avoided for a while.
func (c *Coordinator) drop(ctx context.Context, l *Lease) {
	if l.err != nil && !errors.Is(context.Cause(l.ctx), ErrReleased) {
		c.log.Error().Err(l.err).Int("partition", l.Partition).Msg("partition stopped; letting go of it, and leaving it to other workers for a while")
		c.avoidFor(l.Partition)
	}
	if l.Valid() {
		dctx, cancel := context.WithTimeout(ctx, c.renew())
		if err := c.kv.Delete(dctx, leaseKey(l.Partition), jetstream.LastRevision(l.revision())); err != nil {
			c.log.Debug().Err(err).Int("partition", l.Partition).Msg("delete lease")
		}
		cancel()
	}
	l.timer.Stop()
	l.cancel(ErrReleased)
	c.mu.Lock()
	delete(c.leases, l.Partition)
	c.mu.Unlock()
}

func (c *Coordinator) avoidFor(p int) {
	c.mu.Lock()
	c.avoid[p] = time.Now().Add(c.cfg.Avoid)
	c.mu.Unlock()
}

// mayTake tells whether this worker may take partition p now: one it
// avoids only when every live member avoids it too (nobody else would
// serve it), RetryAlone after it failed here.
func (c *Coordinator) mayTake(p int) bool {
	if !c.ttlRead.Load() || clock.Now().Before(clock.Instant(c.noTakeUntil.Load())) {
		return false
	}
	c.mu.Lock()
	until, avoided := c.avoid[p]
	c.mu.Unlock()
	now := time.Now()
	if !avoided || !now.Before(until) {
		return true
	}
	if now.Before(until.Add(c.cfg.RetryAlone - c.cfg.Avoid)) {
		return false
	}
	for _, m := range c.members() {
		if !c.avoids(m, p) {
			return false
		}
	}
	return true
}

// avoids tells whether member m avoids partition p: this worker by its
// own record, the others by their membership.
func (c *Coordinator) avoids(m string, p int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m == c.cfg.ID {
		return time.Now().Before(c.avoid[p])
	}
	return slices.Contains(c.seen[m].avoids, p)
}

// leave deletes the membership key.
func (c *Coordinator) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = c.kv.Delete(ctx, memberKey(c.cfg.ID), jetstream.LastRevision(c.memberRev.Load()))
}

// members lists the live members, sorted: those whose membership key was
// put within the bucket's TTL, as the watch saw them, and this worker.
func (c *Coordinator) members() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []string{c.cfg.ID}
	for id, s := range c.seen {
		if clock.Since(s.at) < time.Duration(c.ttl.Load()) {
			out = append(out, id)
		}
	}
	return partition.SortedMembers(out)
}

// watchMembers follows the membership keys: a put renews a member, a
// delete (a worker that leaves) removes it; a member whose key expires
// drops out of members after the TTL without one. A put of this worker's
// own key by another incarnation is a duplicate. ready is closed once the
// keys already there were read. A watch that ends is started again.
func (c *Coordinator) watchMembers(ctx context.Context, ready chan<- struct{}) {
	once := sync.Once{}
	defer once.Do(func() { close(ready) })
	for ctx.Err() == nil {
		w, err := c.kv.Watch(ctx, "members.*")
		if err != nil {
			c.log.Warn().Err(err).Msg("cannot watch the membership; trying again")
			select {
			case <-ctx.Done():
			case <-time.After(c.renew()):
			}
			continue
		}
		c.follow(ctx, w, func() { once.Do(func() { close(ready) }) })
		_ = w.Stop()
	}
}

// follow notes what watch w sees until it ends, ctx ends, or the
// membership had to join again (rewatch); ready is called once the keys
// already there were read.
func (c *Coordinator) follow(ctx context.Context, w jetstream.KeyWatcher, ready func()) {
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				ready()
				continue
			}
			c.noteMember(e)
		case <-c.rewatch:
			c.log.Info().Msg("watching the membership afresh")
			return
		case <-ctx.Done():
			return
		}
	}
}

func (c *Coordinator) noteMember(e jetstream.KeyValueEntry) {
	id := strings.TrimPrefix(e.Key(), "members.")
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(c.seen, id)
		return
	}
	var m member
	_ = json.Unmarshal(e.Value(), &m)
	if id == c.cfg.ID {
		if m.Incarnation != "" && m.Incarnation != c.incarnation && e.Revision() > c.memberRev.Load() && c.dup == nil {
			c.dup = fmt.Errorf("%w (%s): another process put this worker's membership", ErrDuplicate, c.cfg.ID)
		}
		return
	}
	c.seen[id] = seenMember{at: clock.Now(), avoids: m.Avoids}
}
