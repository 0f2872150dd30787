package reply

import (
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// resend is a reply to be sent again because its requester was away.
type resend struct {
	reply *nats.Msg
	// msg is its command, kept unacknowledged (in progress) until the
	// reply is taken or given up; nil when the command was acknowledged.
	msg      jetstream.Msg
	progress time.Time // when msg was last kept in progress
	tries    int       // sends so far
	sent     time.Time // the last send, zero while waiting for the next
	conn     uint64    // the connection's reconnect count at the last send
	next     time.Time // when the next send is due
	// comeBack is set when nothing tells whether the last send arrived (the
	// connection broke, a server went away): the held command comes back
	// to be answered again.
	comeBack bool
}

// precaution is a reply that was taken, sent again after a server loss
// noticed late (it may have gone the dead server's way): at at[0] and
// at[1], untracked, outside every quota.
type precaution struct {
	reply *nats.Msg
	at    [2]time.Time
	n     int // sends so far
}

// schedule queues reply to be sent again at next, within the bounds: a
// requester past its share, or a full queue, gets none (false, false: the
// caller brings the command back instead). held tells whether msg is kept
// unacknowledged meanwhile: not past MaxHeld. Called with g.mu held.
func (g *Guard) schedule(reply *nats.Msg, msg jetstream.Msg, next time.Time) (queued, held bool) {
	who := requester(reply.Subject)
	if len(g.resends) >= g.opts.MaxWaiting || g.waiting[who] >= max(1, g.opts.MaxWaiting/10) {
		return false, false
	}
	r := &resend{reply: reply, tries: 1, next: next}
	if msg != nil && g.held < g.opts.MaxHeld {
		r.msg, r.progress = msg, time.Now()
		g.held++
	}
	g.resends = append(g.resends, r)
	g.waiting[who]++
	g.pend(reply.Subject, 1)
	if at, ok := g.warned[who]; !ok || time.Since(at) > time.Minute {
		g.warned[who] = time.Now()
		g.log.Warn().Str("requester", who).Msg("a requester was not there to take its reply; it is sent again for up to half a minute (further ones of this requester not logged for a minute)")
	}
	return true, r.msg != nil
}

// remember keeps a reply that was taken for recentWindow, in case a
// server loss is noticed late. Called with g.mu held.
func (g *Guard) remember(reply *nats.Msg, sent time.Time) {
	if len(g.recent) >= maxRecent {
		// A tenth at once, the oldest: one copy per maxRecent/10 replies,
		// not one per reply. (forget drops what is past the window.)
		g.recent = slices.Delete(g.recent, 0, maxRecent/10)
	}
	g.recent = append(g.recent, sentReply{reply: reply, sent: sent})
}

// afterLoss, when a server loss is new, has every reply taken in the
// recentWindow before it sent again: soon, and once more after routesGone.
// These take no requester's share: a requester whose server died is the
// one whose real misses must still be followed. Called with g.mu held.
func (g *Guard) afterLoss(serverGone, now time.Time) {
	if !serverGone.After(g.lossSeen) {
		return
	}
	g.lossSeen = serverGone
	n := 0
	for _, r := range g.recent {
		if !r.sent.Before(serverGone.Add(-recentWindow)) {
			g.precautions = append(g.precautions, precaution{reply: r.reply,
				at: [2]time.Time{now.Add(g.opts.First), serverGone.Add(routesGone)}})
			n++
		}
	}
	if over := len(g.precautions) - maxRecent; over > 0 {
		g.precautions = slices.Delete(g.precautions, 0, over)
	}
	clear(g.recent)
	g.recent = g.recent[:0]
	if n > 0 {
		g.log.Warn().Int("replies", n).Msg("a NATS server went away: the replies of the half minute before are sent again")
	}
}

// duePrecautions sends the precautions that are due. Called with g.mu
// held.
func (g *Guard) duePrecautions(now time.Time, out *outcome) {
	keep := g.precautions[:0]
	for _, p := range g.precautions {
		if !p.at[p.n].After(now) {
			out.send = append(out.send, p.reply)
			p.n++
		}
		if p.n < len(p.at) {
			keep = append(keep, p)
		}
	}
	clear(g.precautions[len(keep):])
	g.precautions = keep
}

// sendState is what settleDue knows of the connection: whether a flush
// went through, its reconnect count, and when a server last went away.
type sendState struct {
	unknown    bool
	reconnects uint64
	serverGone time.Time
}

// lost tells whether a reply sent at sent, on the connection as it was at
// conn, may have been lost without anybody saying so.
func (st sendState) lost(sent time.Time, conn uint64) bool {
	return st.unknown || conn != st.reconnects || st.serverGone.After(sent.Add(-serverGrace))
}

// dueResends decides, for each reply waiting to be sent again, whether it
// was taken since its last send (its held command is then acknowledged),
// is given up (its command acknowledged, or brought back when stopping or
// when its last send may have been lost), or is due; and keeps held
// commands in progress. Called with g.mu held.
func (g *Guard) dueResends(now time.Time, st sendState, stopping bool, out *outcome) {
	keep := g.resends[:0]
	for _, r := range g.resends {
		if done := g.advance(r, now, st, stopping, out); done {
			g.release(r, stopping, out)
			continue
		}
		if r.msg != nil && now.Sub(r.progress) > progressEvery {
			r.progress = now
			out.progress = append(out.progress, r.msg)
		}
		keep = append(keep, r)
	}
	clear(g.resends[len(keep):])
	g.resends = keep
}

// advance moves r on: it tells whether r is done with (taken, out of
// tries, its held command to come back, or the guard stops), and otherwise
// sends it when due. A send that may have been lost with a connection or a
// server counts as missed. Called with g.mu held.
func (g *Guard) advance(r *resend, now time.Time, st sendState, stopping bool, out *outcome) bool {
	if stopping {
		return true
	}
	if !r.sent.IsZero() {
		if r.sent.Add(g.opts.Settle).After(now) {
			return false // its answer is not in yet
		}
		lost := st.lost(r.sent, r.conn)
		switch {
		case lost && r.msg != nil:
			r.comeBack = true
			return true
		case !lost && !g.missed(r.reply.Subject, r.sent):
			g.remember(r.reply, r.sent)
			return true // taken
		case r.tries >= g.opts.Tries:
			g.givenUp.Add(1)
			return true
		}
		r.next = now.Add(g.opts.First << (r.tries - 1))
		r.sent = time.Time{}
	}
	if !r.next.After(now) {
		r.tries++
		r.sent, r.conn = now, st.reconnects
		out.send = append(out.send, r.reply)
	}
	return false
}

// release lets go of a resend that is done with: its held command is
// acknowledged, or brought back to be answered again (by the partition's
// next holder when the guard stops) when the reply was not known to be
// taken. Called with g.mu held.
func (g *Guard) release(r *resend, stopping bool, out *outcome) {
	who := requester(r.reply.Subject)
	if g.waiting[who]--; g.waiting[who] <= 0 {
		delete(g.waiting, who)
	}
	g.pend(r.reply.Subject, -1)
	if r.msg == nil {
		if stopping {
			g.givenUp.Add(1)
		}
		return
	}
	g.held--
	if stopping || r.comeBack {
		out.nak = append(out.nak, r.msg)
		return
	}
	out.ack = append(out.ack, r.msg)
}
