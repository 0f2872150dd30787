package handler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/reply"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
)

// consumerFixture is a Consumer of partition 0 of a real partitioned
// stream (one partition: every user is in it) on an in-process NATS server.
type consumerFixture struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	cons   jetstream.Consumer
	keys   *testenv.Keys
	inbox  string
	sub    *nats.Subscription
	// observer, when set, is the Observer of the processors it starts.
	observer Observer
}

// newConsumerFixture sets up the stream, partition 0's consumer (with
// ackWait, and without a priority group when plain, so a test can pull
// from it as a second worker would) and the reply inbox.
func newConsumerFixture(t *testing.T, keys *testenv.Keys, ackWait time.Duration, plain bool) *consumerFixture {
	t.Helper()
	ns := testenv.StartNATS(t)
	f := &consumerFixture{nc: testenv.Connect(t, ns.ClientURL()), keys: keys}
	var err error
	if f.js, err = jetstream.New(f.nc); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if f.stream, err = f.js.CreateOrUpdateStream(ctx, testenv.Settings(1).StreamConfig()); err != nil {
		t.Fatal(err)
	}
	cc := testenv.Settings(1).PartitionConsumerConfig(0)
	cc.MaxAckPending, cc.AckWait = 100, ackWait
	if plain {
		cc.PriorityPolicy, cc.PriorityGroups, cc.PinnedTTL = jetstream.PriorityPolicyNone, nil, 0
	}
	if f.cons, err = f.js.CreateOrUpdateConsumer(ctx, topology.StreamName, cc); err != nil {
		t.Fatal(err)
	}
	f.inbox = nats.NewInbox()
	if f.sub, err = f.nc.SubscribeSync(f.inbox + ".*"); err != nil {
		t.Fatal(err)
	}
	return f
}

// run starts a Consumer with proc, stopped at the test's end.
func (f *consumerFixture) run(t *testing.T, proc *command.Applier, group string) {
	t.Helper()
	f.start(t, proc, group)
}

// start starts a Consumer with proc; stop (or the test's end) stops it.
func (f *consumerFixture) start(t *testing.T, proc *command.Applier, group string) (stop func()) {
	t.Helper()
	return f.startCtx(t, context.Background(), proc, group)
}

// startCtx is start under ctx: the Consumer also stops when ctx ends.
func (f *consumerFixture) startCtx(t *testing.T, ctx context.Context, proc *command.Applier, group string) (stop func()) {
	t.Helper()
	part, err := NewPartition(0, proc, jsread.New(f.js, topology.StreamName, true), 8)
	if err != nil {
		t.Fatal(err)
	}
	c := &Processor{
		Partition: part, Conn: f.nc, Log: testenv.Logger(t),
		Wait:          retry.Policy{First: 10 * time.Millisecond, Factor: 2, Max: 100 * time.Millisecond},
		PriorityGroup: group,
		Observer:      f.observer,
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx, f.cons) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// send publishes a command to the stream with Reply-To <inbox>.<name>.
func (f *consumerFixture) send(t *testing.T, subject, sub, name, body string, scopes ...string) {
	t.Helper()
	msg := nats.NewMsg(subject)
	org := ""
	if len(scopes) > 0 {
		org = "org1"
	}
	msg.Header.Set(command.HeaderAuthorization, testenv.Bearer(f.keys.Mint(t, testenv.Token{Subject: sub, Org: org, Scopes: scopes})))
	msg.Header.Set(command.HeaderReplyTo, f.inbox+"."+name)
	msg.Header.Set(command.HeaderMsgID, "id-"+name)
	msg.Data = []byte(body)
	if _, err := f.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// next waits for the next reply.
func (f *consumerFixture) next(t *testing.T) *nats.Msg {
	t.Helper()
	m, err := f.sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("waiting for a reply: %v", err)
	}
	return m
}

// replies waits for n replies and files them by name.
func (f *consumerFixture) replies(t *testing.T, n int) map[string][]*nats.Msg {
	t.Helper()
	got := map[string][]*nats.Msg{}
	for range n {
		m := f.next(t)
		name := m.Subject[len(f.inbox)+1:]
		got[name] = append(got[name], m)
	}
	return got
}

// settled waits until the consumer has nothing pending or unacknowledged.
func (f *consumerFixture) settled(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := f.cons.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending == 0 && info.NumPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer not settled: ack pending %d, pending %d", info.NumAckPending, info.NumPending)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, not a guess at a duration
	}
}

const syncU1 = `{"resourceOwner":"org1","passkeys":[{"id":"pk-1","state":"ready"},{"id":"pk-2","state":"ready"}]}`

// A fault of the machine (every commit fails for a while) makes the
// partition wait: no reply, no nak, nothing given up; once the store
// works, the commands are applied in stream order.
func TestStoreFaultMakesThePartitionWait(t *testing.T) {
	keys := testenv.NewKeys(t)
	var failing atomic.Bool
	var attempts atomic.Int64
	failing.Store(true)
	store := faultyStore{keys.Trust(t, testenv.MustOpenStore(t)), func() error {
		if failing.Load() {
			attempts.Add(1)
			return errors.New("disk full")
		}
		return nil
	}}
	proc := &command.Applier{Store: store, Verifier: keys.Verifier(t), Retention: time.Hour, Log: zerolog.Nop()}
	f := newConsumerFixture(t, keys, time.Second, false)
	f.run(t, proc, topology.PriorityGroup)
	f.send(t, "passkeys.cmd.sync.u1", "a", "sync", syncU1, "passkeys:admin")
	f.send(t, "passkeys.cmd.remove.u1", "u1", "rm1", `{"tokenId":"pk-1"}`)
	f.send(t, "passkeys.cmd.remove.u1", "u1", "rm2", `{"tokenId":"pk-2"}`)
	// Several attempts, spanning the ack wait (1 s): the commands are kept
	// in progress, not redelivered past each other.
	for attempts.Load() < 15 {
		if _, err := f.sub.NextMsg(50 * time.Millisecond); err == nil {
			t.Fatal("a reply while the store fails")
		}
	}
	failing.Store(false)
	// The commands still buffered past the ack wait come back meanwhile:
	// their second replies are repeats, byte for byte. The first replies
	// come in stream order.
	var order []string
	first := map[string]string{}
	for len(order) < 3 {
		m := f.next(t)
		name := m.Subject[len(f.inbox)+1:]
		if prev, ok := first[name]; ok {
			if prev != string(m.Data) {
				t.Fatalf("a second reply to %s differs: %s, first %s", name, m.Data, prev)
			}
			continue
		}
		first[name] = string(m.Data)
		order = append(order, name)
	}
	want := map[string]string{"sync": `{"details":{"sequence":"1"`, "rm1": `{"details":{"sequence":"2"`, "rm2": `{"code":9,"message":"the pa`}
	if strings.Join(order, " ") != "sync rm1 rm2" {
		t.Fatalf("replies in the order %v", order)
	}
	for name, prefix := range want {
		if !strings.HasPrefix(first[name], prefix) {
			t.Errorf("%s: %s, want %s...", name, first[name], prefix)
		}
	}
	f.settled(t)
}

// A worker that loses the partition (its fence fails and ends its context,
// as lease.Check does) hands back the commands it did not answer: the next
// holder, on the pinned group as in production, answers them within about
// GiveBackDelay, not after the ack wait (a minute here).
func TestUnansweredCommandsAreHandedBack(t *testing.T) {
	keys := testenv.NewKeys(t)
	lostCtx, lose := context.WithCancel(context.Background())
	var fenced atomic.Int64
	lost := &command.Applier{Store: keys.Trust(t, testenv.MustOpenStore(t)), Verifier: keys.Verifier(t), Retention: time.Hour, Log: zerolog.Nop(),
		Fence: func() error { fenced.Add(1); lose(); return errors.New("the lease is gone") }}
	f := newConsumerFixture(t, keys, time.Minute, false)
	stopLost := f.startCtx(t, lostCtx, lost, topology.PriorityGroup)
	f.send(t, "passkeys.cmd.sync.u1", "a", "sync", syncU1, "passkeys:admin")
	f.send(t, "passkeys.cmd.remove.u1", "u1", "rm1", `{"tokenId":"pk-1"}`)
	waitFor(t, func() bool { return fenced.Load() > 0 })
	stopLost()
	lostAt := time.Now()
	if _, err := f.sub.NextMsg(10 * time.Millisecond); err == nil {
		t.Fatal("the worker without the partition replied")
	}
	unpin(t, f)
	holder := &command.Applier{Store: keys.Trust(t, testenv.MustOpenStore(t)), Verifier: keys.Verifier(t), Retention: time.Hour, Log: zerolog.Nop()}
	f.start(t, holder, topology.PriorityGroup)
	got := f.replies(t, 2)
	if took := time.Since(lostAt); took > 5*time.Second {
		t.Errorf("answered %v after the partition was lost; the hand-back should take about %v", took, GiveBackDelay)
	}
	for name, prefix := range map[string]string{"sync": `{"details":{"sequence":"1"`, "rm1": `{"details":{"sequence":"2"`} {
		if len(got[name]) != 1 || !strings.HasPrefix(string(got[name][0].Data), prefix) {
			t.Errorf("%s: %v, want one reply %s...", name, got[name], prefix)
		}
	}
}

// unpin lets the consumer's next puller have the pin at once, as a worker
// that takes a partition does.
func unpin(t *testing.T, f *consumerFixture) {
	t.Helper()
	if err := f.stream.UnpinConsumer(context.Background(), topology.PartitionConsumerName(0), topology.PriorityGroup); err != nil {
		t.Fatal(err)
	}
}

// A command whose rule panics fails the same way on every worker: its
// answer is INTERNAL, stored like any refusal (a redelivery or replay gets
// it again); the commands after it are applied.
func TestPoisonCommand(t *testing.T) {
	keys := testenv.NewKeys(t)
	store := testenv.MustOpenStore(t)
	proc := &command.Applier{Store: keys.Trust(t, store), Verifier: keys.Verifier(t), Retention: time.Hour, Log: zerolog.Nop(),
		Rules: poisonRules{}}
	f := newConsumerFixture(t, keys, time.Second, false)
	f.run(t, proc, topology.PriorityGroup)
	f.send(t, "passkeys.cmd.sync.poison", "a", "poison", syncU1, "passkeys:admin")
	f.send(t, "passkeys.cmd.sync.u1", "a", "sync", syncU1, "passkeys:admin")
	got := f.replies(t, 2)
	testenv.WantError(t, got["poison"][0], 13, passkey.IDInternal, "500")
	if !strings.Contains(string(got["sync"][0].Data), `"sequence":"1"`) {
		t.Fatalf("the command after the poison one: %s", got["sync"][0].Data)
	}
	f.settled(t)
	// Its answer is kept: a redelivery or a replay repeats it.
	err := store.View(func(tx *storage.Tx) error {
		o, err := tx.Outcome("poison", command.MsgIDKey(passkey.ScopeMsgID(testenv.Issuer, "a", "id-poison")))
		if err != nil {
			return err
		}
		if o == nil || reply.Render(o.Answer).ErrorCode != "500" || string(reply.Render(o.Answer).Body) != string(got["poison"][0].Data) {
			t.Errorf("stored outcome of the poison command: %+v", o)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Two workers both pulling one partition (a pin is not exclusive): the
// first takes the partition's first commands and dies before it applies
// them; the second is delivered the later ones first. It applies the
// earlier ones from the stream before them, in order, and answers them at
// once (not after their ack wait); when they come back after the ack wait
// they are repeats, answered again with the same replies byte for byte.
func TestLaterCommandNeverOvertakes(t *testing.T) {
	keys := testenv.NewKeys(t)
	store := testenv.MustOpenStore(t)
	proc := &command.Applier{Store: keys.Trust(t, store), Verifier: keys.Verifier(t), Retention: time.Hour, Log: zerolog.Nop()}
	f := newConsumerFixture(t, keys, 2*time.Second, true)
	f.send(t, "passkeys.cmd.sync.u1", "a", "sync", syncU1, "passkeys:admin")
	f.send(t, "passkeys.cmd.remove.u1", "u1", "rm1", `{"tokenId":"pk-1"}`)
	// The first worker: takes both, never acks (it died).
	batch, err := f.cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for range batch.Messages() {
		n++
	}
	if n != 2 {
		t.Fatalf("the first worker took %d commands, want 2", n)
	}
	f.send(t, "passkeys.cmd.remove.u1", "u1", "rm2", `{"tokenId":"pk-2"}`)
	var early atomic.Int64
	f.observer = Observer{AnsweredEarly: func() { early.Add(1) }}
	f.run(t, proc, "")
	// In stream order: the two read from the stream, answered as they are
	// applied (and counted), then rm2, the only command delivered at first.
	var first []*nats.Msg
	for _, want := range []string{"sync", "rm1", "rm2"} {
		m := f.next(t)
		if name := m.Subject[len(f.inbox)+1:]; name != want {
			t.Fatalf("reply to %s, want %s", name, want)
		}
		first = append(first, m)
	}
	if !strings.Contains(string(first[0].Data), `"sequence":"1"`) || !strings.Contains(string(first[1].Data), `"sequence":"2"`) {
		t.Fatalf("the commands read from the stream: sync %s, rm1 %s", first[0].Data, first[1].Data)
	}
	// rm2 came after sync and rm1: with both applied first, it would leave
	// u1 without a first factor.
	testenv.WantError(t, first[2], 9, passkey.IDPasskeyLast, "400")
	if n := early.Load(); n != 2 {
		t.Errorf("%d answers counted as early, want 2 (sync and rm1)", n)
	}
	// After the ack wait the first worker's commands come back: repeats,
	// the same replies.
	got := f.replies(t, 2)
	for i, name := range []string{"sync", "rm1"} {
		if len(got[name]) != 1 || string(got[name][0].Data) != string(first[i].Data) {
			t.Fatalf("%s when it came back: %v, want %s again", name, got[name], first[i].Data)
		}
	}
	f.settled(t)
	err = store.View(func(tx *storage.Tx) error {
		u, err := tx.User("u1")
		if err != nil {
			return err
		}
		if u.Sequence != 2 || len(u.Passkeys) != 1 || u.Passkeys[0].ID != "pk-2" {
			t.Errorf("u1: sequence %d, passkeys %+v", u.Sequence, u.Passkeys)
		}
		if tx.AppliedSeq() != 3 {
			t.Errorf("applied sequence %d, want 3", tx.AppliedSeq())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A partition's consumer takes only its partition's commands, stored under
// subjects nobody can publish to; the publisher's subjects are mapped
// exactly as partition.Of computes.
func TestStreamPartitionsAsPartitionOf(t *testing.T) {
	ns := testenv.StartNATS(t)
	nc := testenv.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n = 7
	stream, err := js.CreateOrUpdateStream(ctx, testenv.Settings(n).StreamConfig())
	if err != nil {
		t.Fatal(err)
	}
	users := []string{"u1", "u2", "alice", "bob", "69629023906488334", "x", "user-with-dashes", "ünïcode"}
	for _, u := range users {
		if _, err := js.Publish(ctx, "passkeys.cmd.remove."+u, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	for i, u := range users {
		m, err := stream.GetMsg(ctx, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		p, orig, err := partition.Original(m.Subject)
		if err != nil || p != partition.Of(u, n) || orig != "passkeys.cmd.remove."+u {
			t.Errorf("%s stored as %s: partition %d, original %q (%v); want partition %d", u, m.Subject, p, orig, err, partition.Of(u, n))
		}
	}
	// The stored subjects are outside the capture: a publish there is refused.
	if _, err := js.Publish(ctx, "passkeys.part.0.remove.u1", []byte("{}")); !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Errorf("publish straight into a partition: %v, want no stream", err)
	}
	if got, err := topology.StreamPartitions(stream.CachedInfo().Config); err != nil || got != n {
		t.Errorf("partitions kept with the stream: %d (%v)", got, err)
	}
}

// A command the store has applied past (its applied sequence is beyond it)
// but keeps no outcome for is not applied again, and its requester is told
// so (OUTCOME-UNAVAILABLE) rather than left without an answer.
func TestAppliedCommandWithoutOutcomeIsAnswered(t *testing.T) {
	keys := testenv.NewKeys(t)
	store := testenv.MustOpenStore(t)
	proc := &command.Applier{Store: keys.Trust(t, store), Verifier: keys.Verifier(t), Retention: time.Hour, Log: zerolog.Nop()}
	if err := proc.Store.Update(func(tx *storage.Tx) error { return tx.SetAppliedSeq(100) }); err != nil {
		t.Fatal(err)
	}
	f := newConsumerFixture(t, keys, time.Second, false)
	f.run(t, proc, topology.PriorityGroup)
	f.send(t, "passkeys.cmd.sync.u1", "a", "sync", syncU1, "passkeys:admin")
	testenv.WantError(t, f.next(t), 14, passkey.IDOutcomeUnavailable, "503")
	f.settled(t)
	if err := store.View(func(tx *storage.Tx) error {
		if u, err := tx.User("u1"); u != nil || err != nil {
			t.Errorf("the command was applied: %+v %v", u, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// waitFor waits, up to 10 s, until cond holds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
	}
}

// faultyStore is a store whose transactions fail while fault says so: a
// fault of this machine (a full disk).
type faultyStore struct {
	*storage.Store
	fault func() error
}

func (f faultyStore) Update(fn func(*storage.Tx) error) error {
	if err := f.fault(); err != nil {
		return err
	}
	return f.Store.Update(fn)
}

// poisonRules are passkey's rules, with a bug for user "poison": they
// panic.
type poisonRules struct{ command.PasskeyRules }

func (r poisonRules) SyncUser(p passkey.Principal, userID string, u *passkey.User, req passkey.SyncRequest, at time.Time) (*passkey.User, error) {
	if userID == "poison" {
		panic("a bug")
	}
	return r.PasskeyRules.SyncUser(p, userID, u, req, at)
}

// A batch whose commands are not contiguous in the stream (the one between
// went to another worker) has the gap filled from what the partition has
// applied: the batch's earlier command is read from the stream with it,
// never taken for applied because a later one was.
func TestGapBehindAnUncommittedCommandOfTheBatch(t *testing.T) {
	keys := testenv.NewKeys(t)
	f := newConsumerFixture(t, keys, time.Minute, true)
	for _, u := range []string{"u1", "u2", "u3"} {
		f.send(t, "passkeys.cmd.sync."+u, "a", "sync-"+u, `{"resourceOwner":"org1","password":true}`, "passkeys:admin")
	}
	batch, err := f.cons.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != 3 {
		t.Fatalf("fetched %d commands, want 3", len(msgs))
	}
	store := keys.Trust(t, testenv.MustOpenStore(t))
	part, err := NewPartition(0, &command.Applier{Store: store, Verifier: keys.Verifier(t), Retention: time.Hour, Log: zerolog.Nop()},
		jsread.New(f.js, topology.StreamName, true), 8)
	if err != nil {
		t.Fatal(err)
	}
	c := &Processor{Partition: part, Conn: f.nc, Log: zerolog.Nop(), Wait: retry.Wait}
	ctx := context.Background()
	cb, ok := c.checkBatch(ctx, []delivery{{msg: msgs[0]}, {msg: msgs[2]}}) // the second went elsewhere
	if !ok {
		t.Fatal("the batch was not checked")
	}
	c.commitBatch(ctx, cb)
	err = store.View(func(tx *storage.Tx) error {
		for _, u := range []string{"u1", "u2", "u3"} {
			if user, err := tx.User(u); err != nil || user == nil || user.Sequence != 1 {
				return fmt.Errorf("%s not applied: %+v, %v", u, user, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
