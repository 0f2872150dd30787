package handler

import (
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// ReplyGuard sends the consumers' replies so that a requester that was
// away when its reply went out (its NATS server died, its connection was
// cut) still gets one: a requester may get a repeat, never silence. Core
// NATS delivers at most once and says nothing of a message nobody took,
// except to a publisher that gives a reply subject: then the server answers
// "no responders" (a 503 status naming the subject) when nobody listens.
// So each reply carries a reply subject of the worker's own, and a command
// is acknowledged only once its reply has settled: when the server said
// nobody listened on its requester's inbox, or on the rest of that
// requester's inboxes right after it (the reply may have been on its way to
// the server that died), or the worker's own connection broke after the
// reply went out, or a NATS server went away meanwhile (the reply may have
// been lost in it), the command is not acknowledged but comes back a second
// later and is answered again from its stored outcome, until the requester
// is back or GiveUp has passed since the command was stored.
type ReplyGuard struct {
	conn *nats.Conn
	log  zerolog.Logger
	// settle is how long after a reply its command waits for its
	// acknowledgement: the time for the server's "no responders".
	settle time.Duration
	// giveUp bounds how long after a command was stored its requester is
	// waited for.
	giveUp time.Duration

	subject string
	sub     *nats.Subscription
	// servers counts the NATS servers that went away (nil: none ever
	// does): a reply sent before one went may have been lost in it.
	servers func() uint64

	mu sync.Mutex
	// gone is when the server last said nobody listens on a reply subject,
	// and on the inboxes of a requester (prefix).
	gone, goneFrom map[string]time.Time
	queue          []settling
	wake           chan struct{}
	stop, done     chan struct{}
}

// settling is a command whose reply was sent, waiting for its
// acknowledgement.
type settling struct {
	msg     jetstream.Msg
	meta    *jetstream.MsgMetadata
	replyTo string
	sent    time.Time
	// conn is the connection's reconnect count when the reply went out: a
	// reply sent on a connection that broke since may have been lost with
	// it (in the dying server's buffers), though nobody said so.
	conn uint64
	// servers is the count of servers gone when the reply went out.
	servers uint64
	log     zerolog.Logger
}

// Reply guard timing.
const (
	replySettle = 500 * time.Millisecond
	replyGiveUp = 2 * time.Minute
	replyAgain  = time.Second
)

// NewReplyGuard subscribes to the "no responders" answers on conn, below
// its inbox prefix, and starts acknowledging. servers, when set, counts the
// NATS servers that went away (natsconn.ServerWatch). Close stops it.
func NewReplyGuard(conn *nats.Conn, servers func() uint64, log zerolog.Logger) (*ReplyGuard, error) {
	if servers == nil {
		servers = func() uint64 { return 0 }
	}
	g := &ReplyGuard{conn: conn, log: log, settle: replySettle, giveUp: replyGiveUp, subject: conn.NewInbox(), servers: servers,
		gone: map[string]time.Time{}, goneFrom: map[string]time.Time{}, wake: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	sub, err := conn.Subscribe(g.subject, g.noResponders)
	if err != nil {
		return nil, err
	}
	g.sub = sub
	go g.run()
	return g, nil
}

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
func (g *ReplyGuard) noResponders(m *nats.Msg) {
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
func (g *ReplyGuard) Send(reply *nats.Msg, msg jetstream.Msg, meta *jetstream.MsgMetadata, log zerolog.Logger) {
	reply.Reply = g.subject
	if err := g.conn.PublishMsg(reply); err != nil {
		log.Error().Err(err).Msg("reply")
	}
	g.mu.Lock()
	g.queue = append(g.queue, settling{msg: msg, meta: meta, replyTo: reply.Subject, sent: time.Now(),
		conn: g.conn.Stats().Reconnects, servers: g.servers(), log: log})
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// Close acknowledges what is settling without waiting out the settle time
// (the worker stops), and stops.
func (g *ReplyGuard) Close() {
	close(g.stop)
	<-g.done
	_ = g.sub.Unsubscribe()
}

func (g *ReplyGuard) run() {
	defer close(g.done)
	for {
		g.mu.Lock()
		var next time.Duration
		if len(g.queue) > 0 {
			next = time.Until(g.queue[0].sent.Add(g.settle))
		}
		empty := len(g.queue) == 0
		g.mu.Unlock()
		stopping := false
		switch {
		case empty:
			select {
			case <-g.wake:
				continue
			case <-g.stop:
				return
			}
		case next > 0:
			select {
			case <-time.After(next):
			case <-g.stop:
				stopping = true
			}
		}
		g.settleDue(stopping)
		if stopping {
			return
		}
	}
}

// settleDue acknowledges the commands whose replies have settled (all of
// them when stopping), or has them come back to be answered again.
func (g *ReplyGuard) settleDue(all bool) {
	// Every "no responders" for a reply sent before now has arrived once
	// the server has answered a PING sent now. Without that answer (the
	// connection is down) nothing is known of the replies: they are sent
	// again.
	unknown := g.conn.FlushTimeout(2*time.Second) != nil
	reconnects, servers := g.conn.Stats().Reconnects, g.servers()
	now := time.Now()
	g.mu.Lock()
	n := 0
	for n < len(g.queue) && (all || !g.queue[n].sent.Add(g.settle).After(now)) {
		n++
	}
	due := append([]settling(nil), g.queue[:n]...)
	g.queue = append(g.queue[:0], g.queue[n:]...)
	var again []bool
	for _, s := range due {
		t, gone := g.gone[s.replyTo]
		f, cut := g.goneFrom[requester(s.replyTo)]
		again = append(again, unknown || s.conn != reconnects || s.servers != servers || (gone && !t.Before(s.sent)) ||
			(cut && !f.Before(s.sent) && f.Before(s.sent.Add(g.settle))))
	}
	for k, t := range g.gone {
		if now.Sub(t) > time.Minute {
			delete(g.gone, k)
		}
	}
	for k, t := range g.goneFrom {
		if now.Sub(t) > time.Minute {
			delete(g.goneFrom, k)
		}
	}
	g.mu.Unlock()
	for i, s := range due {
		if again[i] && time.Since(s.meta.Timestamp) < g.giveUp {
			s.log.Warn().Str("reply_to", s.replyTo).Msg("the requester was not there to take its reply; the command comes back to be answered again")
			if err := s.msg.NakWithDelay(replyAgain); err != nil {
				s.log.Error().Err(err).Msg("nak")
			}
			continue
		}
		if again[i] {
			s.log.Warn().Str("reply_to", s.replyTo).Dur("waited", g.giveUp).Msg("the requester is gone; its reply is not sent again (a repeat with the same Nats-Msg-Id gets it)")
		}
		if err := s.msg.Ack(); err != nil {
			s.log.Error().Err(err).Msg("ack")
		}
	}
}
