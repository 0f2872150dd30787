package ownership

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/clock"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/topology"
)

// A coordinator follows the bucket's TTL: when another build (or a reset)
// makes it shorter, the leases held now end by the new one at once, and
// the next renewals hold by it; a longer one counts from the next renewal.
func TestLeasesFollowTheBucketsTTL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	js, bc, kv := leaseBucket(t, 10*time.Second)
	c, err := New(kv, Config{ID: "a", Partitions: 1, TTL: bc.TTL, Renew: 500 * time.Millisecond, Margin: 500 * time.Millisecond}, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	sent := clock.Now()
	l := newLease(ctx, 0, 1, sent, time.Duration(c.hold.Load()))
	c.leases[0] = l
	untilOf := func() clock.Instant { l.mu.Lock(); defer l.mu.Unlock(); return l.until }
	if got, want := untilOf(), sent.Add(9500*time.Millisecond); got != want {
		t.Fatalf("a lease taken under a 10-s TTL ends at +%v, want +9.5 s", time.Duration(got-sent))
	}

	bc.TTL = 4 * time.Second // shorter: as a build with another default would set it
	if _, err := js.UpdateKeyValue(ctx, bc); err != nil {
		t.Fatal(err)
	}
	c.followTTL(ctx)
	if got := time.Duration(c.hold.Load()); got != 3500*time.Millisecond {
		t.Errorf("hold %v after the TTL became 4 s, want 3.5 s", got)
	}
	if got, want := untilOf(), sent.Add(3500*time.Millisecond); got != want {
		t.Errorf("the lease held now ends at +%v, want +3.5 s: the bucket forgets it that soon", time.Duration(got-sent))
	}

	bc.TTL = 20 * time.Second // longer: nothing held now lasts longer
	if _, err := js.UpdateKeyValue(ctx, bc); err != nil {
		t.Fatal(err)
	}
	c.followTTL(ctx)
	if got := time.Duration(c.hold.Load()); got != 19500*time.Millisecond {
		t.Errorf("hold %v after the TTL became 20 s, want 19.5 s", got)
	}
	if got, want := untilOf(), sent.Add(3500*time.Millisecond); got != want {
		t.Errorf("the lease held now ends at +%v, want still +3.5 s until its next renewal", time.Duration(got-sent))
	}
}

// With the default timing, the renewals follow the bucket's TTL too: a
// bucket made again with a shorter TTL under running workers
// (`worker provision --reset-leases --lease-ttl 3s`) is renewed every
// third of it, so its leases do not run out between renewals.
func TestRenewalsFollowTheBucketsTTL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	js, bc, kv := leaseBucket(t, 6*time.Second)
	c, err := New(kv, Config{ID: "a", Partitions: 1, TTL: bc.TTL}, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if got, hold := c.renew(), c.holdNow(); got != 2*time.Second || hold != 5*time.Second {
		t.Fatalf("under a 6-s TTL: renewals every %v holding %v, want 2 s and 5 s", got, hold)
	}
	bc.TTL = 3 * time.Second
	if _, err := js.UpdateKeyValue(ctx, bc); err != nil {
		t.Fatal(err)
	}
	c.followTTL(ctx)
	if got, hold := c.renew(), c.holdNow(); got != time.Second || hold != 2500*time.Millisecond {
		t.Errorf("under a 3-s TTL: renewals every %v holding %v, want 1 s and 2.5 s", got, hold)
	}
}

// statusFails is a lease bucket whose Status (a JetStream API request)
// fails while its keys are written: the TTL cannot be read.
type statusFails struct{ jetstream.KeyValue }

func (statusFails) Status(context.Context) (jetstream.KeyValueStatus, error) {
	return nil, context.DeadlineExceeded
}

// A worker that joins a bucket afresh (its membership gone: the bucket may
// have been made again, with a shorter TTL) and cannot read its TTL takes
// nothing, and holds no lease longer than the shortest TTL allows: one
// that cannot read it never holds a lease past the bucket's expiry.
func TestNothingTakenUntilTheTTLIsRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, bc, kv := leaseBucket(t, 30*time.Second)
	c, err := New(statusFails{kv}, Config{ID: "a", Partitions: 1, TTL: bc.TTL}, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if !c.mayTake(0) || c.holdNow() != 29*time.Second {
		t.Fatalf("under a 30-s TTL read at start: may take %v, hold %v; want true, 29 s", c.mayTake(0), c.holdNow())
	}
	sent := clock.Now()
	l := newLease(ctx, 0, 1, sent, c.holdNow())
	c.leases[0] = l
	// This worker's membership was on revision 7 of a bucket that is gone:
	// the renewal finds no key and joins afresh.
	c.memberRev.Store(7)
	if err := c.renewMembership(ctx); err != nil {
		t.Fatal(err)
	}
	if c.memberRev.Load() == 7 {
		t.Fatal("the membership was not joined afresh")
	}
	if c.mayTake(0) {
		t.Error("a partition may be taken before the bucket's TTL is read")
	}
	if got := c.holdNow(); got != 2500*time.Millisecond {
		t.Errorf("a renewal holds %v before the TTL is read, want 2.5 s (the shortest TTL's hold)", got)
	}
	l.mu.Lock()
	until := l.until
	l.mu.Unlock()
	if got := time.Duration(until - sent); got != 2500*time.Millisecond {
		t.Errorf("the lease held ends at +%v, want +2.5 s", got)
	}
}

// leaseBucket is a lease bucket with TTL ttl on a server of the test's own,
// its configuration (to update it), and the JetStream context that made it.
func leaseBucket(t *testing.T, ttl time.Duration) (jetstream.JetStream, jetstream.KeyValueConfig, jetstream.KeyValue) {
	t.Helper()
	js, err := jetstream.New(testenv.Connect(t, testenv.StartNATS(t).ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	bc := topology.Settings{Replicas: 1}.LeaseBucketConfig()
	bc.TTL = ttl
	kv, err := js.CreateKeyValue(context.Background(), bc)
	if err != nil {
		t.Fatal(err)
	}
	return js, bc, kv
}
