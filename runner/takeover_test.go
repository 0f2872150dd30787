package runner_test

import (
	"context"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/internal/testenv/testworker"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/topology"
)

// A partition taken over while the holder before had commands in hand
// that it never answered (it died with them, or they were on their way to
// it when it let go): the new holder answers them once it serves, not once
// their ack wait has run out and they come back: the last as many as the
// consumer says are unacknowledged, above its ack floor. The holder before
// is a bare pull here that keeps its commands in progress, so the server
// gives nothing back while the test waits: every reply is the early one.
// When they do come back (a nak), they are answered again with the same
// bytes and headers (an error's, a trace context).
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
	stays, away := nats.NewInbox(), nats.NewInbox() // a requester there throughout, and one away
	subStays, err := nc.SubscribeSync(stays + ".*")
	if err != nil {
		t.Fatal(err)
	}
	send := func(subject, replyTo, name, body string, hdr ...string) {
		m := nats.NewMsg(subject)
		m.Header.Set("Authorization", admin)
		m.Header.Set("Reply-To", replyTo+"."+name)
		m.Header.Set(nats.MsgIdHdr, name)
		for i := 0; i+1 < len(hdr); i += 2 {
			m.Header.Set(hdr[i], hdr[i+1])
		}
		m.Data = []byte(body)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	// Nine commands of partition 0: a sync of each of eight users, then a
	// refused removal. The requester of the sixth and eighth is away.
	var users []string
	for u := 0; len(users) < 8; u++ {
		if id := "u" + strconv.Itoa(u); partition.Of(id, cfg.Partitions) == 0 {
			users = append(users, id)
		}
	}
	var names []string
	for k, u := range users {
		inbox := stays
		if k == 5 || k == 7 {
			inbox = away
		}
		names = append(names, "sync-"+u)
		send("passkeys.cmd.sync."+u, inbox, names[k], `{"resourceOwner":"org1","passkeys":[{"id":"pk-1","state":"ready"}]}`,
			"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e47"+strconv.Itoa(10+k)+"-00f067aa0ba902b7-01")
	}
	names = append(names, "rm-unknown")
	send("passkeys.cmd.remove."+users[0], stays, "rm-unknown", `{"tokenId":"pk-unknown"}`) // refused: NOT_FOUND

	// The holder before: takes all nine, acknowledges the first, third and
	// fourth, and keeps the rest in progress. The consumer then says: six
	// unacknowledged, above the first, up to the ninth. The new holder
	// answers the last six of those eight: the fourth (acknowledged: the
	// bound's price) to the ninth; not the third (acknowledged), nor the
	// second (held, but not among the last: its delivery answers it).
	cons, err := js.Consumer(ctx, topology.StreamName, topology.PartitionConsumerName(0))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(len(names), jetstream.FetchPriorityGroup(topology.PriorityGroup), jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var held []jetstream.Msg
	k := 0
	for m := range batch.Messages() {
		if got := m.Headers().Get(nats.MsgIdHdr); got != names[k] {
			t.Fatalf("delivery %d is %s, want %s", k, got, names[k])
		}
		if k == 0 || k == 2 || k == 3 {
			if err := m.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
		} else {
			held = append(held, m)
		}
		k++
	}
	if k != len(names) {
		t.Fatalf("the holder before took %d commands, want %d", k, len(names))
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
	cfg.HTTPListen = testenv.FreeAddr(t)
	testworker.Start(t, cfg)
	early := []string{names[3], names[4], names[6], names[8]} // of the stays requester
	first := readReplies(t, subStays, early)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) { // counted after each publish
		got := metric(t, cfg.HTTPListen, "passkeys_replies_early_total")
		if got == "6" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("passkeys_replies_early_total %s, want 6", got)
		}
	}
	wantReply(t, first["rm-unknown"], passkey.IDPasskeyNotFound)
	for name, m := range first {
		if name != "rm-unknown" && m.Header.Get("traceparent") == "" {
			t.Errorf("the early reply to %s lost its trace context: %v", name, m.Header)
		}
	}

	// The holder before gives them back: the new holder answers them again
	// from their stored outcomes, the same bytes and headers.
	let()
	for _, m := range held {
		if err := m.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	second := readReplies(t, subStays, []string{names[1], names[4], names[6], names[8]})
	for name, m := range second {
		if f, ok := first[name]; ok && (string(m.Data) != string(f.Data) || !maps.EqualFunc(m.Header, f.Header, slices.Equal)) {
			t.Errorf("reply %s: %s %v early, %s %v when its delivery came back", name, f.Data, f.Header, m.Data, m.Header)
		}
	}
}

// metric reads a metric's value from the worker's /metrics at addr.
func metric(t *testing.T, addr, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	t.Fatalf("no metric %s", name)
	return ""
}

// readReplies reads one reply for each of names (the reply subject's last
// token) from sub, and fails on any other.
func readReplies(t *testing.T, sub *nats.Subscription, names []string) map[string]*nats.Msg {
	t.Helper()
	got := map[string]*nats.Msg{}
	for len(got) < len(names) {
		m, err := sub.NextMsg(40 * time.Second)
		if err != nil {
			t.Fatalf("%d of %d replies (%v): %v", len(got), len(names), names, err)
		}
		name := m.Subject[len(sub.Subject)-1:]
		if _, dup := got[name]; dup || !slices.Contains(names, name) {
			t.Fatalf("a reply to %s; want one to each of %v", name, names)
		}
		got[name] = m
	}
	return got
}

func wantReply(t *testing.T, m *nats.Msg, id string) {
	t.Helper()
	if m == nil || m.Header.Get("Nats-Service-Error-Code") == "" {
		t.Fatalf("want the error %s with its service error headers, got %v", id, m)
	}
	testenv.WantError(t, m, 5, id, "404")
}
