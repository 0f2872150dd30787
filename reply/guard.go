package reply

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Guard sends the processors' replies so that a requester that was away
// when its reply went out (its NATS server died or froze, its connection
// was cut) still gets one: a requester may get a repeat, never silence.
// Core NATS delivers at most once and says nothing of a message nobody
// took, except to a publisher that gives a reply subject: then the server
// answers "no responders" (a 503 status naming the subject) when nobody
// listens. So each reply carries a reply subject of the worker's own, and
// its command is acknowledged once the reply has settled (half a second):
//
//   - When the server said nobody listened on the requester's inbox, or on
//     the requester's other inboxes right after the reply (it may have been
//     on its way to a server that died), the reply is sent again from
//     memory, about 1.5, 4, 8.5, 17 and 33.5 s after the first send, until somebody takes it. Its
//     command stays unacknowledged meanwhile (kept in progress), so that
//     if this worker stops or dies first, the command comes back to the
//     partition's next holder and is answered again. Past Options.MaxHeld
//     such commands, a command is acknowledged and only its reply waits, in
//     memory; past a requester's share of waiting replies, its command
//     comes back a little later instead (a few times, then it is given up).
//     A send again that may itself have been lost (the connection broke, a
//     server went away) brings its held command back.
//   - When the worker's own connection broke after the reply went out, or
//     a NATS server of the cluster went away within a second before it or
//     while it settled (the other servers route to the dead one until they
//     notice), nothing tells whether the reply arrived: the command is not
//     acknowledged but comes back a second later, to whichever worker
//     holds its partition then, and is answered again from its stored
//     outcome.
//   - A server that froze, or whose machine went away without closing its
//     connections, is noticed only after a few seconds, and the other
//     servers route to it for longer still: every reply taken in the half
//     minute before such a loss (at most maxRecent) is sent again from
//     memory, once soon and once after the routes to the dead server are
//     surely gone, outside every requester's share.
//
// These are rare events no caller can cause.
type Guard struct {
	conn *nats.Conn
	log  zerolog.Logger
	opts Options

	subject string
	sub     *nats.Subscription
	// noResp holds the "no responders" answers until settleDue reads them:
	// a channel, not a callback, so that once a flush has returned, every
	// answer the server sent before it is in it.
	noResp chan *nats.Msg
	// serverGone is when a NATS server last went away (nil: none ever
	// does): a reply sent around then may have been lost in it.
	serverGone func() time.Time

	mu sync.Mutex
	// gone is when the server last said nobody listens on a reply subject,
	// and on the inboxes of a requester (prefix); kept only for subjects and
	// requesters with a reply settling or waiting to be sent again
	// (pending, pendingFrom), so bounded by them.
	gone, goneFrom       map[string]time.Time
	pending, pendingFrom map[string]int
	queue                []settling
	resends              []*resend
	precautions          []precaution
	// laterCount commands were brought back later since laterSince.
	laterCount int
	laterSince time.Time
	// held counts the resends whose commands wait for them, unacknowledged;
	// waiting the resends of each requester.
	held    int
	waiting map[string]int
	// recent are the replies taken in the last recentWindow, for a server
	// loss noticed late; lossSeen is the loss they were last sent again for.
	recent   []sentReply
	lossSeen time.Time
	warned   map[string]time.Time // requester prefixes warned about, and when
	forgot   time.Time            // when the maps were last cleaned
	wake     chan struct{}
	stop     chan struct{}
	done     chan struct{}

	resent, givenUp atomic.Int64
}

// Options are a Guard's bounds and schedule; zero fields take their
// defaults.
type Options struct {
	// Settle is how long after a reply its command waits for its
	// acknowledgement: the time for the server's "no responders". Default
	// half a second.
	Settle time.Duration
	// Tries bounds the sends of a reply nobody takes (default 6: 1+5 sends
	// over about 31 s); First is the pause before the first send again
	// (default 1 s), doubling after each.
	Tries int
	First time.Duration
	// MaxHeld bounds the commands kept unacknowledged while their replies
	// are sent again (default 1,000); MaxWaiting the replies waiting to be
	// sent again (default 10,000), and a tenth of that per requester.
	MaxHeld, MaxWaiting int
	// NoResends gives up at once on a reply nobody took, and acknowledges
	// its command: the fault campaign's measure of the resends.
	NoResends bool
}

func (o Options) withDefaults() Options {
	if o.Settle <= 0 {
		o.Settle = 500 * time.Millisecond
	}
	if o.Tries <= 0 {
		o.Tries = 6
	}
	if o.First <= 0 {
		o.First = time.Second
	}
	if o.MaxHeld <= 0 {
		o.MaxHeld = 1000
	}
	if o.MaxWaiting <= 0 {
		o.MaxWaiting = 10000
	}
	return o
}

// settling is a command whose reply was sent, waiting for its
// acknowledgement.
type settling struct {
	msg   jetstream.Msg
	reply *nats.Msg
	// sent is taken before the publish: a "no responders" answer is never
	// older than the reply it answers.
	sent time.Time
	// conn is the connection's reconnect count when the reply went out: a
	// reply sent on a connection that broke since may have been lost with
	// it (in the dying server's buffers), though nobody said so.
	conn uint64
	log  zerolog.Logger
}

// sentReply is a reply that was taken, kept for a late server loss.
type sentReply struct {
	reply *nats.Msg
	sent  time.Time
}

// Guard timing and bounds that are not Options.
const (
	// replyAgain is how soon a command whose reply may have been lost
	// comes back.
	replyAgain = time.Second
	// serverGrace is how long before a reply a server that went away may
	// still have lost it: the time the cluster's other servers take to
	// drop the dead one's routes and interest, generously.
	serverGrace = time.Second
	// recentWindow is how far back a server loss makes replies go again
	// (a frozen server is noticed a few seconds late, and routed to for
	// up to about 20 s with the shipped nats.conf), and maxRecent bounds
	// the replies kept for it.
	recentWindow = 30 * time.Second
	maxRecent    = 50000
	// routesGone is how long after a server loss its routes are surely
	// dropped by the other servers (nats.conf: ping_interval 5 s, ping_max
	// 2), so that a reply sent again then reaches the requester where it
	// is now, or gets its "no responders".
	routesGone = 25 * time.Second
	// maxLaterPerSecond bounds the commands brought back later, past their
	// requesters' shares.
	maxLaterPerSecond = 100
	// progressEvery is how often a held command is kept in progress: well
	// inside the consumers' ack wait.
	progressEvery = 3 * time.Second
)

// NewGuard subscribes to the "no responders" answers on conn, below its
// inbox prefix, and starts acknowledging. serverGone, when set, tells when
// a NATS server last went away (natsconn.ServerWatch.LastGone). Close stops
// it.
func NewGuard(conn *nats.Conn, serverGone func() time.Time, log zerolog.Logger, opts Options) (*Guard, error) {
	if serverGone == nil {
		serverGone = func() time.Time { return time.Time{} }
	}
	g := &Guard{conn: conn, log: log, opts: opts.withDefaults(), subject: conn.NewInbox(), serverGone: serverGone,
		noResp: make(chan *nats.Msg, 1<<16), gone: map[string]time.Time{}, goneFrom: map[string]time.Time{},
		pending: map[string]int{}, pendingFrom: map[string]int{},
		waiting: map[string]int{}, warned: map[string]time.Time{},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	sub, err := conn.ChanSubscribe(g.subject, g.noResp)
	if err != nil {
		return nil, err
	}
	g.sub = sub
	go g.run()
	return g, nil
}

// Resent counts the replies sent again because nobody took them, or
// because a server went away; GivenUp those given up on.
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

// Send publishes reply and has its command (msg) acknowledged once the
// reply has settled.
func (g *Guard) Send(reply *nats.Msg, msg jetstream.Msg, log zerolog.Logger) {
	reply.Reply = g.subject
	s := settling{msg: msg, reply: reply, conn: g.conn.Stats().Reconnects, sent: time.Now(), log: log}
	if err := g.conn.PublishMsg(reply); err != nil {
		log.Error().Err(err).Msg("reply")
	}
	g.mu.Lock()
	// In the order of the times: usually the end.
	i := len(g.queue)
	for i > 0 && g.queue[i-1].sent.After(s.sent) {
		i--
	}
	g.queue = append(g.queue, settling{})
	copy(g.queue[i+1:], g.queue[i:])
	g.queue[i] = s
	g.pend(reply.Subject, 1)
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// Close settles what is settling without waiting out the settle time (the
// worker stops): a command whose reply was taken is acknowledged, one
// whose requester was away, or whose reply is being sent again, comes back
// to the partition's next holder; replies kept only in memory are given
// up.
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
		// recent: a server loss noticed now still has replies to send again.
		idle := len(g.queue) == 0 && len(g.resends) == 0 && len(g.precautions) == 0 && len(g.recent) == 0
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

// noResponders files the "no responders" answers that have arrived.
func (g *Guard) noResponders() {
	for {
		select {
		case m := <-g.noResp:
			if m.Header.Get("Status") != "503" {
				continue
			}
			subject := m.Header.Get("Nats-Subject")
			now := time.Now()
			g.mu.Lock()
			if g.pending[subject] > 0 {
				g.gone[subject] = now
			}
			if who := requester(subject); g.pendingFrom[who] > 0 {
				g.goneFrom[who] = now
			}
			g.mu.Unlock()
		default:
			return
		}
	}
}

// outcome is what settleDue does with the commands and replies it
// settled, outside the lock: a publish may wait for the connection, and
// Send must not wait for it meanwhile.
type outcome struct {
	ack, nak, progress []jetstream.Msg
	// later come back after a pause that grows with their deliveries: their
	// requesters were away and past their share of resends.
	later    []jetstream.Msg
	comeBack []settling
	send     []*nats.Msg
}

// settleDue handles what is due: replies that have settled (all of them
// when stopping) and replies to send again.
func (g *Guard) settleDue(stopping bool) {
	// Every "no responders" for a reply sent before now has arrived once
	// the server has answered a PING sent now. Without that answer (the
	// connection is down) nothing is known of the replies.
	st := sendState{unknown: g.conn.FlushTimeout(2*time.Second) != nil}
	g.noResponders()
	st.reconnects, st.serverGone = g.conn.Stats().Reconnects, g.serverGone()
	now := time.Now()
	var out outcome
	g.mu.Lock()
	n := 0
	for n < len(g.queue) && (stopping || !g.queue[n].sent.Add(g.opts.Settle).After(now)) {
		n++
	}
	due := append([]settling(nil), g.queue[:n]...)
	// slices.Delete zeroes the slots past the new end: a message dropped
	// from a queue must not stay reachable from its array until an append
	// overwrites it (the same for recent and precautions).
	g.queue = slices.Delete(g.queue, 0, n)
	for _, s := range due {
		g.settle(s, now, st, stopping, &out)
	}
	g.afterLoss(st.serverGone, now)
	g.dueResends(now, st, stopping, &out)
	if !stopping {
		g.duePrecautions(now, &out)
	}
	if now.Sub(g.forgot) > time.Second {
		g.forget(now)
	}
	g.mu.Unlock()
	g.carryOut(out)
}

// settle decides what becomes of a command whose reply has settled: it
// comes back when nothing tells whether its reply arrived; it is
// acknowledged when the reply was taken; when the requester was away its
// reply is sent again (the command held, or acknowledged past MaxHeld), or,
// past the requester's share, the command comes back later to be answered
// again, a few times at most. Called with g.mu held.
func (g *Guard) settle(s settling, now time.Time, st sendState, stopping bool, out *outcome) {
	missed := g.missed(s.reply.Subject, s.sent)
	g.pend(s.reply.Subject, -1)
	switch {
	case st.lost(s.sent, s.conn):
		out.comeBack = append(out.comeBack, s)
	case missed && stopping:
		out.nak = append(out.nak, s.msg)
	case missed && g.opts.NoResends:
		g.givenUp.Add(1)
		out.ack = append(out.ack, s.msg)
	case missed:
		queued, held := g.schedule(s.reply, s.msg, now.Add(g.opts.First))
		switch {
		case held:
		case queued:
			out.ack = append(out.ack, s.msg)
		case delivered(s.msg) < g.opts.Tries && g.mayComeBackLater(now):
			out.later = append(out.later, s.msg)
		default:
			g.givenUp.Add(1)
			out.ack = append(out.ack, s.msg)
		}
	default:
		out.ack = append(out.ack, s.msg)
		g.remember(s.reply, s.sent)
	}
}

// mayComeBackLater tells whether one more command may come back later
// because its requester is past its share: at most maxLaterPerSecond, so
// that a mass of vanished requesters cannot fill the partitions' pending
// acknowledgements with commands that come back. Called with g.mu held.
func (g *Guard) mayComeBackLater(now time.Time) bool {
	if now.Sub(g.laterSince) >= time.Second {
		g.laterSince, g.laterCount = now, 0
	}
	if g.laterCount >= maxLaterPerSecond {
		return false
	}
	g.laterCount++
	return true
}

// delivered is how often msg has been delivered (1 when unknown).
func delivered(msg jetstream.Msg) int {
	if md, err := msg.Metadata(); err == nil {
		return int(md.NumDelivered)
	}
	return 1
}

// pend counts a reply settling or waiting to be sent again (d = 1) or no
// longer (d = -1), by subject and by requester. Called with g.mu held.
func (g *Guard) pend(subject string, d int) {
	if count(g.pending, subject, d) {
		delete(g.gone, subject) // only read while something is pending
	}
	if who := requester(subject); count(g.pendingFrom, who, d) {
		delete(g.goneFrom, who)
	}
}

// count adds d to m[k], and tells whether that left nothing (k deleted).
func count(m map[string]int, k string, d int) bool {
	if m[k] += d; m[k] <= 0 {
		delete(m, k)
		return true
	}
	return false
}

// carryOut acknowledges, sends again and brings back what settleDue
// decided.
func (g *Guard) carryOut(out outcome) {
	for _, m := range out.ack {
		if err := m.Ack(); err != nil {
			g.log.Error().Err(err).Msg("ack")
		}
	}
	for _, m := range out.progress {
		_ = m.InProgress()
	}
	for _, m := range out.nak {
		if err := m.NakWithDelay(replyAgain); err != nil {
			g.log.Error().Err(err).Msg("nak")
		}
	}
	for _, m := range out.later {
		if err := m.NakWithDelay(replyAgain << min(delivered(m), 5)); err != nil {
			g.log.Error().Err(err).Msg("nak")
		}
	}
	for _, s := range out.comeBack {
		s.log.Warn().Str("reply_to", s.reply.Subject).Msg("not known whether the reply arrived (a connection broke, or a NATS server went away): the command comes back to be answered again")
		if err := s.msg.NakWithDelay(replyAgain); err != nil {
			s.log.Error().Err(err).Msg("nak")
		}
	}
	for _, r := range out.send {
		if err := g.conn.PublishMsg(r); err != nil {
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
	return (gone && !t.Before(sent)) || (cut && !f.Before(sent) && f.Before(sent.Add(g.opts.Settle)))
}

// forget drops what is older than a minute from the maps. Called with
// g.mu held.
func (g *Guard) forget(now time.Time) {
	g.forgot = now
	cut := 0
	for cut < len(g.recent) && now.Sub(g.recent[cut].sent) > recentWindow {
		cut++
	}
	g.recent = slices.Delete(g.recent, 0, cut)
	for _, m := range []map[string]time.Time{g.gone, g.goneFrom, g.warned} {
		for k, t := range m {
			if now.Sub(t) > time.Minute {
				delete(m, k)
			}
		}
	}
}
