package reply

import (
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// resend is a reply to be sent again.
type resend struct {
	reply *nats.Msg
	// msg is its command, kept unacknowledged (in progress) until the
	// reply is taken or given up; nil when the command was acknowledged.
	msg      jetstream.Msg
	progress time.Time // when msg was last kept in progress
	tries    int       // sends so far
	sent     time.Time // the last send, zero while waiting for the next
	next     time.Time // when the next send is due
	// again, when set, is one more send at that time even if the last one
	// was taken: after a server loss, once its routes are surely gone.
	again time.Time
}

// schedule queues reply to be sent again at next (and at again, when set),
// within the bounds: a requester past its share, or a full queue, gets no
// more, and a command past MaxHeld is not held. It tells whether msg is
// held (acknowledged later by the guard). Called with g.mu held.
func (g *Guard) schedule(reply *nats.Msg, msg jetstream.Msg, next, again time.Time) (held bool) {
	who := requester(reply.Subject)
	if len(g.resends) >= g.opts.MaxWaiting || g.waiting[who] >= max(1, g.opts.MaxWaiting/10) {
		g.givenUp.Add(1)
		return false
	}
	r := &resend{reply: reply, tries: 1, next: next, again: again}
	if msg != nil && g.held < g.opts.MaxHeld {
		r.msg, r.progress = msg, time.Now()
		g.held++
	}
	g.resends = append(g.resends, r)
	g.waiting[who]++
	if at, ok := g.warned[who]; !ok || time.Since(at) > time.Minute {
		g.warned[who] = time.Now()
		g.log.Warn().Str("requester", who).Msg("a requester was not there to take its reply; it is sent again for up to half a minute (further ones of this requester not logged for a minute)")
	}
	return r.msg != nil
}

// remember keeps a reply that was taken for recentWindow, in case a
// server loss is noticed late. Called with g.mu held.
func (g *Guard) remember(reply *nats.Msg, sent time.Time) {
	cut := 0
	for cut < len(g.recent) && (sent.Sub(g.recent[cut].sent) > recentWindow || len(g.recent)-cut >= maxRecent) {
		cut++
	}
	if cut > 0 {
		clear(g.recent[:cut])
		g.recent = append(g.recent[:0], g.recent[cut:]...)
	}
	g.recent = append(g.recent, sentReply{reply: reply, sent: sent})
}

// afterLoss, when a server loss is new, has every reply taken in the
// recentWindow before it sent again: soon, and once more after routesGone.
// Called with g.mu held.
func (g *Guard) afterLoss(serverGone, now time.Time) {
	if !serverGone.After(g.lossSeen) {
		return
	}
	g.lossSeen = serverGone
	n := 0
	for _, r := range g.recent {
		if !r.sent.Before(serverGone.Add(-recentWindow)) {
			g.schedule(r.reply, nil, now.Add(g.opts.First), serverGone.Add(routesGone))
			n++
		}
	}
	g.recent = g.recent[:0]
	if n > 0 {
		g.log.Warn().Int("replies", n).Msg("a NATS server went away: the replies of the half minute before are sent again")
	}
}

// dueResends decides, for each reply waiting to be sent again, whether it
// was taken since its last send (its held command is then acknowledged),
// is given up (its command acknowledged, or brought back when stopping),
// or is due; and keeps held commands in progress. Called with g.mu held.
func (g *Guard) dueResends(now time.Time, stopping bool, out *outcome) {
	keep := g.resends[:0]
	for _, r := range g.resends {
		if done := g.advance(r, now, stopping, out); done {
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
// tries, or the guard stops), and otherwise sends it when due. Called with
// g.mu held.
func (g *Guard) advance(r *resend, now time.Time, stopping bool, out *outcome) bool {
	if stopping {
		return true
	}
	if !r.sent.IsZero() {
		if r.sent.Add(g.opts.Settle).After(now) {
			return false // its answer is not in yet
		}
		switch {
		case !g.missed(r.reply.Subject, r.sent) && r.again.IsZero():
			return true // taken
		case !g.missed(r.reply.Subject, r.sent):
			r.next, r.again = r.again, time.Time{}
		case r.tries >= g.opts.Tries:
			g.givenUp.Add(1)
			return true
		default:
			r.next = now.Add(g.opts.First << (r.tries - 1))
		}
		r.sent = time.Time{}
	}
	if !r.next.After(now) {
		r.tries++
		r.sent = now
		out.send = append(out.send, r.reply)
	}
	return false
}

// release lets go of a resend that is done with: its held command is
// acknowledged, or brought back to the partition's next holder when the
// guard stops before the reply was taken. Called with g.mu held.
func (g *Guard) release(r *resend, stopping bool, out *outcome) {
	who := requester(r.reply.Subject)
	if g.waiting[who]--; g.waiting[who] <= 0 {
		delete(g.waiting, who)
	}
	if r.msg == nil {
		if stopping {
			g.givenUp.Add(1)
		}
		return
	}
	g.held--
	if stopping {
		out.nak = append(out.nak, r.msg)
		return
	}
	out.ack = append(out.ack, r.msg)
}
