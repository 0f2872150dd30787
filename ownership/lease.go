package ownership

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/passkeys/worker/internal/clock"
)

// Why a lease's context ends (context.Cause).
var (
	// ErrReleased: the worker lets go of the partition (it is assigned to
	// another worker, it made no progress while loading, or the worker
	// stops). The lease is still held and renewed until the runner
	// returns: the runner finishes what it has in hand and writes its
	// snapshot.
	ErrReleased = errors.New("ownership: letting go of the partition")
	// ErrLost: a renewal was refused; another worker holds the partition.
	ErrLost = errors.New("ownership: the lease is held by another worker now")
	// ErrExpired: the lease was not renewed in time (a pause, a lost
	// connection): another worker may hold it already, so nothing more may
	// be applied or answered.
	ErrExpired = errors.New("ownership: the lease ran out before it was renewed")
)

// Lease is this worker's hold on one partition. Its runner may apply to
// and answer from the partition only while Valid: until the last renewal's
// request was sent plus the bucket's TTL, less a margin, by this worker's
// own monotonic clock. Its Context ends the moment the lease is in doubt,
// or when the worker lets go of it.
type Lease struct {
	Partition int

	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the runner has returned

	mu        sync.Mutex
	rev       uint64
	sent      clock.Instant // when the last renewal that counted was sent
	until     clock.Instant // by the clock that counts a suspended machine's sleep too
	timer     *time.Timer
	releasing bool
	lost      bool

	serving  atomic.Bool
	progress atomic.Int64 // clock.Instant of the runner's last sign of progress
	err      error        // the runner's error, once done
}

func newLease(parent context.Context, p int, rev uint64, sent clock.Instant, ttl time.Duration) *Lease {
	ctx, cancel := context.WithCancelCause(parent)
	l := &Lease{Partition: p, ctx: ctx, cancel: cancel, done: make(chan struct{}), rev: rev, sent: sent, until: sent.Add(ttl)}
	l.progress.Store(int64(clock.Now()))
	l.timer = time.AfterFunc(-clock.Since(l.until), l.expire)
	return l
}

// Valid tells whether the lease is held now, by this worker's own clock
// (one that counts a suspended machine's sleep too). Check it right before
// acting, and after reading what an answer is made of: a worker may have
// been paused between any two instructions.
func (l *Lease) Valid() bool { return l.Check() == nil }

// Check is Valid as an error: nil, or why the lease is not held. A lease
// found run out ends its context, should its timer not have yet (after a
// suspend, Go's timers run late).
func (l *Lease) Check() error {
	l.mu.Lock()
	lost, out := l.lost, !clock.Now().Before(l.until)
	l.mu.Unlock()
	switch {
	case lost:
		return ErrLost
	case out:
		l.cancel(ErrExpired)
		return ErrExpired
	}
	return nil
}

// Context ends when the lease is in doubt (ErrLost, ErrExpired) or the
// worker lets go of the partition (ErrReleased): context.Cause says which.
func (l *Lease) Context() context.Context { return l.ctx }

// Progress tells the coordinator the runner is getting on with loading
// the partition (a snapshot's chunk, a batch of the catch-up).
func (l *Lease) Progress() { l.progress.Store(int64(clock.Now())) }

// sinceProgress is how long ago the runner last showed progress.
func (l *Lease) sinceProgress() time.Duration { return clock.Since(clock.Instant(l.progress.Load())) }

// SetServing says whether the runner serves the partition: caught up,
// consuming and answering reads.
func (l *Lease) SetServing(on bool) { l.serving.Store(on) }

// Serving tells whether the partition is served, under a valid lease.
func (l *Lease) Serving() bool { return l.serving.Load() && l.Valid() }

// renewed extends the lease after a renewal whose request was sent at sent.
// One sent once the lease had run out revives nothing: the bucket may have
// been made again meanwhile (worker provision --reset-leases), its
// revisions starting over, so that an old revision matches another
// worker's lease.
func (l *Lease) renewed(rev uint64, sent clock.Instant, ttl time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost || !sent.Before(l.until) || !l.until.Before(sent.Add(ttl)) {
		return
	}
	l.rev, l.sent, l.until = rev, sent, sent.Add(ttl)
	l.timer.Reset(-clock.Since(l.until))
}

// shorten brings the lease's end forward to its last renewal plus hold:
// the bucket's TTL shrank, and the bucket forgets the lease that much
// sooner.
func (l *Lease) shorten(hold time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if end := l.sent.Add(hold); end.Before(l.until) {
		l.until = end
		l.timer.Reset(-clock.Since(end))
	}
}

// expire ends the lease's context when it ran out unrenewed.
func (l *Lease) expire() {
	l.mu.Lock()
	out := !clock.Now().Before(l.until)
	if !out {
		l.timer.Reset(-clock.Since(l.until))
	}
	l.mu.Unlock()
	if out {
		l.cancel(ErrExpired)
	}
}

// loseIt marks the lease lost: another worker holds it.
func (l *Lease) loseIt() {
	l.mu.Lock()
	l.lost = true
	l.mu.Unlock()
	l.cancel(ErrLost)
}

// release asks the runner to let go; the lease is renewed until it has.
func (l *Lease) release() bool {
	l.mu.Lock()
	first := !l.releasing
	l.releasing = true
	l.mu.Unlock()
	l.cancel(ErrReleased)
	return first
}

func (l *Lease) revision() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rev
}

func (l *Lease) finished() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}
