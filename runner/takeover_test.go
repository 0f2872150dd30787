package runner_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/internal/testenv/testworker"
	"github.com/passkeys/worker/topology"
)

// A partition taken over while the holder before had commands in hand
// that it never answered (it died with them, or they were on their way to
// it when it let go): the new holder answers them as its catch-up applies
// them, not once their ack wait has run out and they come back. The holder
// before is a bare pull here that keeps them in progress, so the server
// gives nothing back while the test waits: every reply is the early one.
// When they do come back (a nak), they are answered again from their
// stored outcomes, byte for byte the same.
func TestTakeoverAnswersWhatTheHolderBeforeHeld(t *testing.T) {
	url := testenv.StartNATS(t).ClientURL()
	keys := testenv.NewKeys(t)
	cfg := testworker.Config(url, keys, t.TempDir())
	_, stop := testworker.Start(t, cfg) // creates the stream and consumers
	stop()

	nc := testenv.Connect(t, url)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	admin := testenv.Bearer(keys.Mint(t, testenv.Token{Subject: "admin", Org: "org1", Scopes: []string{"passkeys:admin"}}))
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox + ".*")
	if err != nil {
		t.Fatal(err)
	}
	const users = 6
	for u := range users {
		m := nats.NewMsg("passkeys.cmd.sync.u" + strconv.Itoa(u))
		m.Header.Set("Authorization", admin)
		m.Header.Set("Reply-To", inbox+"."+strconv.Itoa(u))
		m.Header.Set(nats.MsgIdHdr, "sync-"+strconv.Itoa(u))
		m.Data = []byte(`{"resourceOwner":"org1","passkeys":[{"id":"pk-1","state":"ready"}]}`)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}

	// The holder before: takes every command of both partitions and keeps
	// them in progress without answering.
	var held []jetstream.Msg
	for p := range cfg.Partitions {
		cons, err := js.Consumer(ctx, topology.StreamName, topology.PartitionConsumerName(p))
		if err != nil {
			t.Fatal(err)
		}
		batch, err := cons.Fetch(users, jetstream.FetchPriorityGroup(topology.PriorityGroup), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			held = append(held, m)
		}
	}
	if len(held) != users {
		t.Fatalf("the holder before took %d commands, want %d", len(held), users)
	}
	holding := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-holding:
				return
			case <-tick.C:
				for _, m := range held {
					_ = m.InProgress()
				}
			}
		}
	})
	let := sync.OnceFunc(func() { close(holding); wg.Wait() })
	t.Cleanup(let)

	cfg.DataDir = t.TempDir() // another worker takes both partitions over
	testworker.Start(t, cfg)
	first := readReplies(t, sub, users)

	// The holder before gives them back: they come to the new holder, which
	// answers them again from their stored outcomes.
	let()
	for _, m := range held {
		if err := m.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	again := readReplies(t, sub, users)
	for name, body := range first {
		if again[name] != body {
			t.Errorf("reply %s: %s early, %s when its delivery came back", name, body, again[name])
		}
	}
}

// readReplies reads n replies on sub, one per name (the inbox's last token),
// and checks each is a success.
func readReplies(t *testing.T, sub *nats.Subscription, n int) map[string]string {
	t.Helper()
	got := map[string]string{}
	for len(got) < n {
		m, err := sub.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatalf("%d of %d replies: %v", len(got), n, err)
		}
		testenv.WantSuccess(t, m)
		name := m.Subject[len(sub.Subject)-1:]
		if _, dup := got[name]; dup {
			t.Fatalf("reply %s twice", name)
		}
		got[name] = string(m.Data)
	}
	return got
}
