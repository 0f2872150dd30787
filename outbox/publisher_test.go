package outbox

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
)

// Events wait in the outbox while they cannot be published (here: no
// stream to take them, as in an outage) and are all published, each user's
// in order, once they can; published ones leave the outbox, and a second
// publication of one is dropped as a duplicate.
func TestEventPublisherWaitsAndKeepsOrder(t *testing.T) {
	ns := testenv.StartNATS(t)
	nc := testenv.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	store := testenv.MustOpenStore(t)
	for seq := uint64(1); seq <= 3; seq++ {
		for _, user := range []string{"u1", "u2"} {
			doc := []byte(`{"id":"` + user + ":" + strconv.FormatUint(seq, 10) + `"}`)
			if err := store.Update(func(tx *storage.Tx) error { return tx.PutEvent(user, seq, doc) }); err != nil {
				t.Fatal(err)
			}
		}
	}
	p := New(js, store, zerolog.Nop(), nil)
	ctx := context.Background()
	if n, err := p.publishRound(ctx); err == nil || n != 0 {
		t.Fatalf("published %d with no stream (%v)", n, err)
	}
	if n, _ := store.OutboxLen(); n != 6 {
		t.Fatalf("outbox holds %d events after a failed round, want 6", n)
	}
	stream, err := js.CreateStream(ctx, testenv.Settings(1).EventsStreamConfig())
	if err != nil {
		t.Fatal(err)
	}
	drain(ctx, t, p)
	if n, _ := store.OutboxLen(); n != 0 {
		t.Fatalf("outbox holds %d events after publishing", n)
	}
	for _, user := range []string{"u1", "u2"} {
		cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{topology.EventsPrefix + "." + user}})
		if err != nil {
			t.Fatal(err)
		}
		batch, err := cons.FetchNoWait(10)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for m := range batch.Messages() {
			ids = append(ids, m.Headers().Get("Nats-Msg-Id"))
		}
		if want := []string{user + ":1", user + ":2", user + ":3"}; len(ids) != 3 || ids[0] != want[0] || ids[1] != want[1] || ids[2] != want[2] {
			t.Fatalf("%s's events %v, want %v in order", user, ids, want)
		}
	}
	// The same event again (a crash before the outbox was cleared, a
	// restore): dropped.
	if err := store.Update(func(tx *storage.Tx) error { return tx.PutEvent("u1", 2, []byte(`{"id":"u1:2"}`)) }); err != nil {
		t.Fatal(err)
	}
	if _, err := p.publishRound(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 6 {
		t.Fatalf("stream holds %d events, want 6: a second publication was not dropped", info.State.Msgs)
	}
}

// An event that waited in an outbox for longer than half the events'
// duplicate window (through an outage, or in a snapshot loaded late) is
// published only when the events stream holds no event of its user as new:
// past the window the stream would not drop it as a duplicate.
func TestOldEventPublishedOnce(t *testing.T) {
	ns := testenv.StartNATS(t)
	js, err := jetstream.New(testenv.Connect(t, ns.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, testenv.Settings(1).EventsStreamConfig()); err != nil {
		t.Fatal(err)
	}
	store := testenv.MustOpenStore(t)
	old := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	put := func(user string, seq uint64) {
		id := user + ":" + strconv.FormatUint(seq, 10)
		doc := []byte(`{"id":"` + id + `","time":"` + old + `"}`)
		if err := store.Update(func(tx *storage.Tx) error { return tx.PutEvent(user, seq, doc) }); err != nil {
			t.Fatal(err)
		}
	}
	// u1:2 was published already (its worker died before it cleared the
	// outbox, or the snapshot was written before); u2:1 never was.
	put("u1", 2)
	put("u2", 1)
	msg := nats.NewMsg(topology.EventsPrefix + ".u1")
	msg.Header.Set(nats.MsgIdHdr, "u1:3")
	msg.Data = []byte(`{"id":"u1:3"}`)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	p := New(js, store, zerolog.Nop(), nil)
	p.Published, p.Dedup = jsread.New(js, topology.EventsStreamName, false), time.Minute
	drain(ctx, t, p)
	if n, _ := store.OutboxLen(); n != 0 {
		t.Fatalf("outbox holds %d events", n)
	}
	stream, err := js.Stream(ctx, topology.EventsStreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(topology.EventsPrefix+".>"))
	if err != nil {
		t.Fatal(err)
	}
	if got := info.State.Subjects; got[topology.EventsPrefix+".u1"] != 1 || got[topology.EventsPrefix+".u2"] != 1 {
		t.Fatalf("events per user %v: u1's old event published again, or u2's not at all", got)
	}
}

// drain publishes rounds until one publishes nothing.
func drain(ctx context.Context, t *testing.T, p *Publisher) {
	t.Helper()
	for {
		n, err := p.publishRound(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
}
