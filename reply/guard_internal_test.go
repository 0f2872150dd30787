package reply

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/testenv"
)

// ackCounter is a command's delivery that only counts its acks.
type ackCounter struct {
	jetstream.Msg
	acks *atomic.Int64
}

func (m ackCounter) Ack() error { m.acks.Add(1); return nil }

// A settled reply leaves nothing of itself or its command in the guard's
// arrays. The queue, drained in part (a reply not yet due behind settled
// ones), kept copies of what it moved past its new end, and so did recent:
// after a burst, its commands' messages and replies stayed in memory until
// as many others overwrote them (about 40 MB at rest after a sync of
// 300,000 users).
func TestSettledRepliesAreNotKept(t *testing.T) {
	ns := testenv.StartNATS(t)
	nc := testenv.Connect(t, ns.ClientURL())
	inbox := nats.NewInbox()
	if _, err := nc.SubscribeSync(inbox + ".*"); err != nil {
		t.Fatal(err)
	}
	g, err := NewGuard(nc, nil, zerolog.Nop(), Options{Settle: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var acks atomic.Int64
	for _, name := range []string{"a", "b", "c"} {
		g.Send(&nats.Msg{Subject: inbox + "." + name, Data: []byte(`{}`)}, ackCounter{acks: &acks}, zerolog.Nop())
	}
	due := func(i int) { // makes the i-th reply of the queue due
		g.mu.Lock()
		defer g.mu.Unlock()
		g.queue[i].sent = g.queue[i].sent.Add(-2 * time.Hour)
	}
	due(0)
	due(1)
	for acks.Load() < 2 {
		g.settleDue(false)
	}
	due(0) // "c", now first
	for acks.Load() < 3 {
		g.settleDue(false)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.queue) != 0 {
		t.Fatalf("%d replies still settling", len(g.queue))
	}
	for i, s := range g.queue[:cap(g.queue)] {
		if s.msg != nil || s.reply != nil {
			t.Errorf("slot %d of the settled queue still holds the reply to %s", i, s.reply.Subject)
		}
	}

	// recent: the older of two replies is past the window.
	now := time.Now()
	g.recent = g.recent[:0]
	g.remember(&nats.Msg{Subject: inbox + ".old"}, now.Add(-time.Minute))
	g.remember(&nats.Msg{Subject: inbox + ".new"}, now)
	g.forget(now)
	if len(g.recent) != 1 || g.recent[0].reply.Subject != inbox+".new" {
		t.Fatalf("recent after forget: %v", g.recent)
	}
	for i, r := range g.recent[1:cap(g.recent)] {
		if r.reply != nil {
			t.Errorf("slot %d past recent's end still holds the reply to %s", i+1, r.reply.Subject)
		}
	}
}
