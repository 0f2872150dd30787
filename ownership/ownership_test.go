package ownership_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/ownership"
	"github.com/passkeys/worker/topology"
)

// bucket is a fresh lease bucket on a NATS server of its own.
func bucket(t *testing.T) (jetstream.KeyValue, func()) {
	t.Helper()
	ns := testenv.StartNATS(t)
	js, err := jetstream.New(testenv.Connect(t, ns.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	bc := topology.Settings{Replicas: 1}.LeaseBucketConfig()
	bc.TTL = testTTL
	kv, err := js.CreateKeyValue(context.Background(), bc)
	if err != nil {
		t.Fatal(err)
	}
	return kv, ns.Shutdown
}

// The tests run the protocol at twice production speed: a bucket's TTL of
// 3 s, renewals every 0.5 s (ownership.Config is timing as configuration).
const testTTL = 3 * time.Second

// timing fills in cfg's timings of the tests' speed.
func timing(cfg ownership.Config) ownership.Config {
	cfg.TTL = testTTL
	if cfg.Renew == 0 {
		cfg.Renew = 500 * time.Millisecond
	}
	if cfg.Margin == 0 {
		cfg.Margin = 500 * time.Millisecond
	}
	return cfg
}

// runners records what each worker's runner is given.
type runners struct {
	mu     sync.Mutex
	leases map[string]map[int]*ownership.Lease
	// behave is what a runner does; nil: it serves until its context ends.
	behave func(id string, l *ownership.Lease) error
}

func (r *runners) runner(id string) ownership.Runner {
	return func(l *ownership.Lease) error {
		r.mu.Lock()
		if r.leases[id] == nil {
			r.leases[id] = map[int]*ownership.Lease{}
		}
		r.leases[id][l.Partition] = l
		behave := r.behave
		r.mu.Unlock()
		defer func() {
			r.mu.Lock()
			delete(r.leases[id], l.Partition)
			r.mu.Unlock()
		}()
		if behave != nil {
			return behave(id, l)
		}
		l.SetServing(true)
		<-l.Context().Done()
		return nil
	}
}

func (r *runners) held(id string) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int
	for p, l := range r.leases[id] {
		if l.Serving() {
			out = append(out, p)
		}
	}
	return out
}

func (r *runners) lease(id string, p int) *ownership.Lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.leases[id][p]
}

// start joins a coordinator for id and runs it until the test ends.
func start(t *testing.T, kv jetstream.KeyValue, r *runners, id string, cfg ownership.Config) (*ownership.Coordinator, chan error, context.CancelFunc) {
	t.Helper()
	cfg.ID, cfg.Partitions = id, 8
	c, err := ownership.New(kv, timing(cfg), r.runner(id), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Join(context.Background()); err != nil {
		t.Fatalf("join %s: %v", id, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, done, cancel
}

func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met in %s", d)
		}
	}
}

// Two workers split the partitions; when one stops, the other takes its
// partitions at once (the leaver deletes its leases and membership).
func TestTwoWorkersShareAndHandOver(t *testing.T) {
	t.Parallel()
	kv, _ := bucket(t)
	r := &runners{leases: map[string]map[int]*ownership.Lease{}}
	_, _, stopA := start(t, kv, r, "a", ownership.Config{})
	start(t, kv, r, "b", ownership.Config{})
	waitUntil(t, 20*time.Second, func() bool { return len(r.held("a")) == 4 && len(r.held("b")) == 4 })
	stopA()
	waitUntil(t, 10*time.Second, func() bool { return len(r.held("b")) == 8 })
}

// A worker cut off from NATS stops acting on its partitions once its
// leases run out by its own clock: their contexts end (ErrExpired) and
// Valid is false, though nobody told it anything.
func TestLeaseRunsOutWithoutRenewal(t *testing.T) {
	t.Parallel()
	kv, shutdown := bucket(t)
	r := &runners{leases: map[string]map[int]*ownership.Lease{}}
	start(t, kv, r, "a", ownership.Config{})
	waitUntil(t, 20*time.Second, func() bool { return len(r.held("a")) == 8 })
	l := r.lease("a", 3)
	shutdown()
	select {
	case <-l.Context().Done():
	case <-time.After(testTTL + 2*time.Second):
		t.Fatal("the lease's context did not end when it could not be renewed")
	}
	if !errors.Is(context.Cause(l.Context()), ownership.ErrExpired) || l.Valid() || l.Serving() || l.Check() == nil {
		t.Fatalf("a lease that ran out: cause %v, valid %v", context.Cause(l.Context()), l.Valid())
	}
}

// A second process with the same worker id (a copied data directory) is
// refused while the first renews its membership.
func TestDuplicateWorkerID(t *testing.T) {
	t.Parallel()
	kv, _ := bucket(t)
	r := &runners{leases: map[string]map[int]*ownership.Lease{}}
	start(t, kv, r, "a", ownership.Config{})
	twin, err := ownership.New(kv, timing(ownership.Config{ID: "a", Partitions: 8}), r.runner("a-twin"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := twin.Join(ctx); !errors.Is(err, ownership.ErrDuplicate) {
		t.Fatalf("a second process with the id: %v, want ErrDuplicate", err)
	}
}

// A partition whose runner makes no progress while loading is let go of
// and avoided, and another worker serves it; one whose runner fails is
// avoided too.
func TestStuckOrFailingPartitionMoves(t *testing.T) {
	t.Parallel()
	kv, _ := bucket(t)
	r := &runners{leases: map[string]map[int]*ownership.Lease{}}
	r.behave = func(id string, l *ownership.Lease) error {
		switch {
		case id == "a" && l.Partition%2 == 0: // stuck: never serves, no progress
			<-l.Context().Done()
			return nil
		case id == "a":
			return errors.New("the store does not open")
		}
		l.SetServing(true)
		<-l.Context().Done()
		return nil
	}
	a, _, _ := start(t, kv, r, "a", ownership.Config{StuckAfter: time.Second, Avoid: time.Minute})
	waitUntil(t, 20*time.Second, func() bool { return len(a.Avoided()) == 8 })
	start(t, kv, r, "b", ownership.Config{})
	waitUntil(t, 30*time.Second, func() bool { return len(r.held("b")) == 8 })
}

// A lone worker does not leave a partition that failed on it unserved for
// the whole Avoid: nobody else would serve it, so it tries again after
// RetryAlone (a catch-up that timed out while a NATS node was frozen).
func TestLoneWorkerRetriesAFailedPartition(t *testing.T) {
	t.Parallel()
	kv, _ := bucket(t)
	r := &runners{leases: map[string]map[int]*ownership.Lease{}}
	var mu sync.Mutex
	failed := map[int]bool{}
	r.behave = func(id string, l *ownership.Lease) error {
		mu.Lock()
		first := !failed[l.Partition]
		failed[l.Partition] = true
		mu.Unlock()
		if first {
			return errors.New("catch-up: context deadline exceeded")
		}
		l.SetServing(true)
		<-l.Context().Done()
		return nil
	}
	a, _, _ := start(t, kv, r, "a", ownership.Config{Avoid: time.Hour, RetryAlone: 200 * time.Millisecond})
	waitUntil(t, 20*time.Second, func() bool { return len(r.held("a")) == 8 })
	if got := a.Avoided(); len(got) != 8 {
		t.Fatalf("avoided %v; want all 8 still avoided (taken again only because nobody else would)", got)
	}
}

// Join waits for a lease bucket that does not answer yet (a JetStream that
// is still coming back after every node restarted), rather than give up at
// once: the fault campaign's workers exited here after a power cut of
// every machine.
func TestJoinWaitsForTheBucket(t *testing.T) {
	t.Parallel()
	dir, addr := t.TempDir(), testenv.FreeAddr(t)
	host, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	serve := func() *server.Server {
		ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: dir, Host: host, Port: port, NoLog: true, NoSigs: true})
		if err != nil {
			t.Fatal(err)
		}
		go ns.Start()
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatal("NATS server did not start")
		}
		return ns
	}
	ns := serve()
	js, err := jetstream.New(testenv.Connect(t, ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond)))
	if err != nil {
		t.Fatal(err)
	}
	bc := topology.Settings{Replicas: 1}.LeaseBucketConfig()
	bc.TTL = testTTL
	kv, err := js.CreateKeyValue(context.Background(), bc)
	if err != nil {
		t.Fatal(err)
	}
	ns.Shutdown()
	ns.WaitForShutdown()
	r := &runners{leases: map[string]map[int]*ownership.Lease{}}
	c, err := ownership.New(kv, timing(ownership.Config{ID: "a", Partitions: 8}), r.runner("a"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	joined := make(chan error, 1)
	go func() { joined <- c.Join(context.Background()) }()
	select {
	case err := <-joined:
		t.Fatalf("joined with no server: %v", err)
	case <-time.After(3 * time.Second): // several attempts failed meanwhile
	}
	ns = serve()
	defer ns.Shutdown()
	select {
	case err := <-joined:
		if err != nil {
			t.Fatalf("join once the server is back: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no join 30 s after the server came back")
	}
}

// A bucket whose TTL leaves no safe hold (under topology.MinLeaseTTL) is
// refused with the fix in the message; one that does is taken, whatever
// this build's own TTL, with renewals every third of it (at most 2 s).
func TestHoldComesFromTheBucketsTTL(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		ttl time.Duration
		ok  bool
	}{{0, false}, {2 * time.Second, false}, {3 * time.Second, true}, {4 * time.Second, true}, {time.Minute, true}} {
		_, err := ownership.New(nil, ownership.Config{ID: "a", Partitions: 8, TTL: c.ttl}, nil, zerolog.Nop())
		if (err == nil) != c.ok {
			t.Errorf("TTL %v: %v, want ok %v", c.ttl, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--reset-leases") {
			t.Errorf("TTL %v: %v, want the fix named", c.ttl, err)
		}
	}
}
