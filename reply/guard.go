package reply

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Guard sends the consumers' replies so that a requester that was
// away when its reply went out (its NATS server died, its connection was
// cut) still gets one: a requester may get a repeat, never silence. Core
// NATS delivers at most once and says nothing of a message nobody took,
// except to a publisher that gives a reply subject: then the server answers
// "no responders" (a 503 status naming the subject) when nobody listens.
// So each reply carries a reply subject of the worker's own, and its
// command is acknowledged once the reply has settled (half a second):
//
//   - When the server said nobody listened on the requester's inbox, or on
//     the requester's other inboxes right after the reply (it may have been
//     on its way to a server that died), the reply is sent again from
//     memory, 1, 2, 4, 8 and 16 s later, until somebody takes it. A
//     requester that left for good costs a few publishes, and a bounded
//     queue of them, nothing more: the command itself is acknowledged.
//   - When the worker's own connection broke after the reply went out, or
//     a NATS server of the cluster went away within a second of it (before:
//     the other servers may still route to the dead one for a moment),
//     nothing tells whether the reply arrived: the command is not
//     acknowledged but comes back a second later, to whichever worker
//     holds its partition then, and is answered again from its stored
//     outcome. These are rare events
//     no caller can cause.
type Guard struct {
	conn *nats.Conn
	log  zerolog.Logger
	// settle is how long after a reply its command waits for its
	// acknowledgement: the time for the server's "no responders".
	settle time.Duration

	subject string
	sub     *nats.Subscription
	// serverGone is when a NATS server last went away (nil: none ever
	// does): a reply sent around then may have been lost in it.
	serverGone func() time.Time

	mu sync.Mutex
	// gone is when the server last said nobody listens on a reply subject,
	// and on the inboxes of a requester (prefix).
	gone, goneFrom map[string]time.Time
	queue          []settling
	resends        []*resend
	warned         map[string]time.Time // requester prefixes warned about, and when
	wake           chan struct{}
	stop, done     chan struct{}

	resent, givenUp atomic.Int64
}

// settling is a command whose reply was sent, waiting for its
// acknowledgement.
type settling struct {
	msg   jetstream.Msg
	reply *nats.Msg
	sent  time.Time
	// conn is the connection's reconnect count when the reply went out: a
	// reply sent on a connection that broke since may have been lost with
	// it (in the dying server's buffers), though nobody said so.
	conn uint64
	log  zerolog.Logger
}

// resend is a reply nobody took, to be sent again.
type resend struct {
	reply *nats.Msg
	tries int       // sends so far
	sent  time.Time // the last send, zero while waiting for the next
	next  time.Time // when the next send is due
}

// Guard timing and bounds.
const (
	replySettle = 500 * time.Millisecond
	// replyAgain is how soon a command whose reply may have been lost
	// comes back.
	replyAgain = time.Second
	// replyTries bounds the sends of a reply nobody takes: 1+5 sends over
	// about 31 s, backing off from 1 s.
	replyTries = 6
	// maxResends bounds the replies waiting to be sent again; past it the
	// oldest is given up (a requester asks again with its Nats-Msg-Id).
	maxResends = 10000
	// serverGrace is how long before a reply a server that went away may
	// still have lost it: the time the cluster's other servers take to
	// drop the dead one's routes and interest, generously.
	serverGrace = time.Second
)

// NewGuard subscribes to the "no responders" answers on conn, below
// its inbox prefix, and starts acknowledging. serverGone, when set, tells
// when a NATS server last went away (natsconn.ServerWatch.LastGone). Close
// stops it.
func NewGuard(conn *nats.Conn, serverGone func() time.Time, log zerolog.Logger) (*Guard, error) {
	if serverGone == nil {
		serverGone = func() time.Time { return time.Time{} }
	}
	g := &Guard{conn: conn, log: log, settle: replySettle, subject: conn.NewInbox(), serverGone: serverGone,
		gone: map[string]time.Time{}, goneFrom: map[string]time.Time{}, warned: map[string]time.Time{},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	sub, err := conn.Subscribe(g.subject, g.noResponders)
	if err != nil {
		return nil, err
	}
	g.sub = sub
	go g.run()
	return g, nil
}

// Resent counts the replies sent again because nobody took them;
// GivenUp those given up on after their last try.
func (g *Guard) Resent() int64  { return g.resent.Load() }
func (g *Guard) GivenUp() int64 { return g.givenUp.Load() }

// requester is what identifies a requester's inboxes: a reply subject
// without its last token (nats.go's inboxes are <prefix>.<connection's
// id>.<request's>).
func requester(subject string) string {
	if i := strings.LastIndexByte(subject, '.'); i > 0 {
		return subject[:i]
	}
	return subject
}

// noResponders records a 503 for a reply subject.
func (g *Guard) noResponders(m *nats.Msg) {
	if m.Header.Get("Status") != "503" {
		return
	}
	subject := m.Header.Get("Nats-Subject")
	now := time.Now()
	g.mu.Lock()
	g.gone[subject] = now
	g.goneFrom[requester(subject)] = now
	g.mu.Unlock()
}

// Send publishes reply and has its command (msg) acknowledged once the
// reply has settled.
func (g *Guard) Send(reply *nats.Msg, msg jetstream.Msg, log zerolog.Logger) {
	reply.Reply = g.subject
	conn := g.conn.Stats().Reconnects
	if err := g.conn.PublishMsg(reply); err != nil {
		log.Error().Err(err).Msg("reply")
	}
	s := settling{msg: msg, reply: reply, conn: conn, log: log}
	g.mu.Lock()
	s.sent = time.Now() // under the lock: the queue is in the order of its times
	g.queue = append(g.queue, s)
	g.mu.Unlock()
	g.poke()
}

func (g *Guard) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// Close settles what is settling without waiting out the settle time (the
// worker stops), gives up the replies waiting to be sent again, and stops.
func (g *Guard) Close() {
	close(g.stop)
	<-g.done
	_ = g.sub.Unsubscribe()
}

// run settles replies and sends again those nobody took, until Close.
func (g *Guard) run() {
	defer close(g.done)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		g.mu.Lock()
		idle := len(g.queue) == 0 && len(g.resends) == 0
		g.mu.Unlock()
		var wake <-chan time.Time
		if !idle {
			wake = tick.C
		}
		select {
		case <-g.stop:
			g.settleDue(true)
			return
		case <-g.wake:
			continue
		case <-wake:
		}
		g.settleDue(false)
	}
}

// settleDue handles what is due: replies that have settled (all of them
// when stopping) and replies to send again.
func (g *Guard) settleDue(all bool) {
	// Every "no responders" for a reply sent before now has arrived once
	// the server has answered a PING sent now. Without that answer (the
	// connection is down) nothing is known of the replies.
	unknown := g.conn.FlushTimeout(2*time.Second) != nil
	reconnects, serverGone := g.conn.Stats().Reconnects, g.serverGone()
	now := time.Now()
	g.mu.Lock()
	n := 0
	for n < len(g.queue) && (all || !g.queue[n].sent.Add(g.settle).After(now)) {
		n++
	}
	due := append([]settling(nil), g.queue[:n]...)
	g.queue = append(g.queue[:0], g.queue[n:]...)
	var comeBack, taken []settling
	for _, s := range due {
		switch {
		case unknown || s.conn != reconnects || serverGone.After(s.sent.Add(-serverGrace)):
			comeBack = append(comeBack, s)
			continue
		case g.missed(s.reply.Subject, s.sent):
			g.schedule(&resend{reply: s.reply, tries: 1, next: s.sent.Add(time.Second)})
		}
		taken = append(taken, s)
	}
	again := g.dueResends(now, all)
	g.forget(now)
	g.mu.Unlock()
	// Acknowledged and sent outside the lock: a publish may wait for the
	// connection, and Send must not wait for it meanwhile.
	for _, s := range taken {
		if err := s.msg.Ack(); err != nil {
			s.log.Error().Err(err).Msg("ack")
		}
	}
	for _, s := range comeBack {
		s.log.Warn().Str("reply_to", s.reply.Subject).Msg("not known whether the reply arrived (a connection broke, or a NATS server went away): the command comes back to be answered again")
		if err := s.msg.NakWithDelay(replyAgain); err != nil {
			s.log.Error().Err(err).Msg("nak")
		}
	}
	for _, r := range again {
		if err := g.conn.PublishMsg(r.reply); err != nil {
			g.log.Warn().Err(err).Msg("send a reply again")
		}
		g.resent.Add(1)
	}
}

// missed tells whether a reply sent at sent to subject was not taken: the
// server said nobody listened on its subject after it went out, or on its
// requester's other inboxes within the settle time after (a requester's
// server that died with the reply on its way). Called with g.mu held.
func (g *Guard) missed(subject string, sent time.Time) bool {
	t, gone := g.gone[subject]
	f, cut := g.goneFrom[requester(subject)]
	return (gone && !t.Before(sent)) || (cut && !f.Before(sent) && f.Before(sent.Add(g.settle)))
}

// schedule queues r to be sent again (the oldest is given up when the
// queue is full), and warns once a minute per requester. Called with g.mu
// held.
func (g *Guard) schedule(r *resend) {
	if len(g.resends) >= maxResends {
		g.resends = g.resends[1:]
		g.givenUp.Add(1)
	}
	g.resends = append(g.resends, r)
	who := requester(r.reply.Subject)
	if at, ok := g.warned[who]; !ok || time.Since(at) > time.Minute {
		g.warned[who] = time.Now()
		g.log.Warn().Str("requester", who).Msg("a requester was not there to take its reply; it is sent again for up to half a minute (further ones of this requester not logged for a minute)")
	}
}

// dueResends returns the replies to send now, having dropped those that
// were taken since their last send and given up those out of tries.
// Called with g.mu held.
func (g *Guard) dueResends(now time.Time, stopping bool) []*resend {
	var out []*resend
	keep := g.resends[:0]
	for _, r := range g.resends {
		if !r.sent.IsZero() {
			if r.sent.Add(g.settle).After(now) && !stopping {
				keep = append(keep, r) // its answer is not in yet
				continue
			}
			if !g.missed(r.reply.Subject, r.sent) {
				continue // taken
			}
			if r.tries >= replyTries {
				g.givenUp.Add(1)
				continue
			}
			r.next, r.sent = now.Add(time.Duration(1<<r.tries)*time.Second/2), time.Time{}
		}
		if stopping {
			g.givenUp.Add(1)
			continue
		}
		if !r.next.After(now) {
			r.tries++
			r.sent = now
			out = append(out, r)
		}
		keep = append(keep, r)
	}
	clear(g.resends[len(keep):])
	g.resends = keep
	return out
}

// forget drops what is older than a minute from the maps. Called with
// g.mu held.
func (g *Guard) forget(now time.Time) {
	for _, m := range []map[string]time.Time{g.gone, g.goneFrom, g.warned} {
		for k, t := range m {
			if now.Sub(t) > time.Minute {
				delete(m, k)
			}
		}
	}
}
