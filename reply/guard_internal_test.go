package reply

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/testenv"
)

// ackCounter is a command's delivery that counts its acks; the rest of
// what the guard may do with a delivery does nothing.
type ackCounter struct {
	jetstream.Msg
	acks *atomic.Int64
}

func (m ackCounter) Ack() error                                { m.acks.Add(1); return nil }
func (m ackCounter) Nak() error                                { return nil }
func (m ackCounter) NakWithDelay(time.Duration) error          { return nil }
func (m ackCounter) InProgress() error                         { return nil }
func (m ackCounter) Term() error                               { return nil }
func (m ackCounter) Metadata() (*jetstream.MsgMetadata, error) { return nil, errors.New("no metadata") }

// A settled reply leaves nothing of itself or its command in the guard's
// arrays. Its queue, drained in part (a reply not yet due behind settled
// ones), and recent and precautions, cut at the front, kept copies of what
// they moved past their new end: after a burst, its commands' messages and
// replies stayed in memory until as many others overwrote them (about
// 40 MB at rest after a sync of 300,000 users).
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
	// Settles the first n replies of the queue, which the guard's own
	// loop may do too.
	settleFirst := func(n int, want int64) {
		g.mu.Lock()
		for i := range n {
			g.queue[i].sent = g.queue[i].sent.Add(-2 * time.Hour)
		}
		g.mu.Unlock()
		deadline := time.Now().Add(10 * time.Second)
		for acks.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d commands acknowledged", acks.Load(), want)
			}
			g.settleDue(false)
		}
	}
	settleFirst(2, 2) // "c" not due: the queue is drained in part
	settleFirst(1, 3)

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

	// recent, cut by age (forget) and by its bound (remember).
	now := time.Now()
	clear(g.recent)
	g.recent = g.recent[:0]
	g.remember(&nats.Msg{Subject: inbox + ".old"}, now.Add(-time.Minute))
	g.remember(&nats.Msg{Subject: inbox + ".new"}, now)
	g.forget(now)
	if len(g.recent) != 1 || g.recent[0].reply.Subject != inbox+".new" {
		t.Fatalf("recent after forget: %v", g.recent)
	}
	noneAfter(t, "recent", g.recent, func(r sentReply) bool { return r.reply != nil })
	for len(g.recent) < maxRecent {
		g.recent = append(g.recent, sentReply{reply: &nats.Msg{Subject: inbox + ".x"}, sent: now})
	}
	g.remember(&nats.Msg{Subject: inbox + ".last"}, now)
	if want := maxRecent - maxRecent/10 + 1; len(g.recent) != want {
		t.Fatalf("recent holds %d replies past its bound, want %d", len(g.recent), want)
	}
	noneAfter(t, "recent", g.recent, func(r sentReply) bool { return r.reply != nil })

	// precautions, cut by their bound after a server loss.
	g.precautions = make([]precaution, maxRecent)
	for i := range g.precautions {
		g.precautions[i].reply = &nats.Msg{Subject: inbox + ".p"}
	}
	g.afterLoss(now, now) // adds precautions for what recent holds
	if len(g.precautions) != maxRecent {
		t.Fatalf("%d precautions, want the bound %d", len(g.precautions), maxRecent)
	}
	noneAfter(t, "precautions", g.precautions, func(p precaution) bool { return p.reply != nil })
}

// noneAfter fails t when a slot of s's array past its end holds something.
func noneAfter[E any](t *testing.T, name string, s []E, holds func(E) bool) {
	t.Helper()
	for i, e := range s[len(s):cap(s)] {
		if holds(e) {
			t.Errorf("slot %d past the end of %s (length %d) still holds a reply", len(s)+i, name, len(s))
			return
		}
	}
}
