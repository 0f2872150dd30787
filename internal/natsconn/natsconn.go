// Package natsconn holds what every program of the service needs to
// connect to NATS as the shipped nats.conf expects: its own inbox prefix,
// and URLs fit to log.
package natsconn

import (
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	natsjwt "github.com/nats-io/jwt/v2"
)

// InboxPrefix is the inbox prefix a connection uses: prefix when set,
// otherwise _INBOX_<user> when the first URL names a user or the
// credentials file's user JWT has a name (nats.conf lets each user
// subscribe only below its own prefix, so no user receives another's
// commands, replies or tokens), otherwise "" (the ordinary _INBOX, as on
// the embedded development server).
func InboxPrefix(prefix, urls, credsFile string) string {
	if prefix != "" {
		return prefix
	}
	first, _, _ := strings.Cut(urls, ",")
	if u, err := url.Parse(strings.TrimSpace(first)); err == nil && u.User != nil && u.User.Username() != "" {
		return "_INBOX_" + u.User.Username()
	}
	if credsFile != "" {
		if raw, err := os.ReadFile(credsFile); err == nil {
			if tok, err := natsjwt.ParseDecoratedJWT(raw); err == nil {
				if uc, err := natsjwt.DecodeUserClaims(tok); err == nil && uc.Name != "" {
					return "_INBOX_" + uc.Name
				}
			}
		}
	}
	return ""
}

// RedactURL hides passwords and tokens in NATS URLs before they are logged
// or shown.
func RedactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
			if _, hasPass := u.User.Password(); !hasPass {
				u.User = url.User("redacted")
				parts[i] = u.String()
			}
		}
	}
	return strings.Join(parts, ",")
}

// ServerWatch tells when a server of the NATS cluster last went away
// (LastGone). A reply on its way through a server that died is lost without
// anyone saying so (core NATS is at most once), and so is one sent just
// after, while the other servers have not yet dropped the dead one's
// interest: a reply sent around such a moment is worth sending again. It keeps a
// connection of its own to each of the URLs it is given, each bound to its
// server (no other server is tried): a server that dies closes its
// connection at once, however soon it is back. And it follows the servers
// the first one tells of (its connect_urls), which nats.go drops from that
// connection's pool when the server says one has gone, for servers the
// URLs do not name.
type ServerWatch struct {
	conns  []*nats.Conn
	onGone func(server string)
	last   atomic.Pointer[time.Time]
	stop   chan struct{}
	done   chan struct{}
}

// WatchServers connects to each of urls (with opts) and follows the
// cluster's servers until Close; onGone (may be nil) hears of each server
// that goes away.
func WatchServers(urls string, onGone func(server string), opts ...nats.Option) (*ServerWatch, error) {
	if onGone == nil {
		onGone = func(string) {}
	}
	w := &ServerWatch{stop: make(chan struct{}), done: make(chan struct{}), onGone: onGone}
	for i, u := range strings.Split(urls, ",") {
		u = strings.TrimSpace(u)
		name := RedactURL(u)
		own := append(opts[:len(opts):len(opts)], nats.Name("passkeys-worker-servers"), nats.DontRandomize(), nats.MaxReconnects(-1),
			nats.RetryOnFailedConnect(true), nats.ReconnectWait(time.Second),
			// A server that froze, or whose machine went away without a word,
			// is noticed in 2 to 3 s, not after the default 2 minutes.
			nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil { // nil: our own Close
					w.gone(name)
				}
			}))
		if i > 0 {
			own = append(own, nats.IgnoreDiscoveredServers())
		}
		nc, err := nats.Connect(u, own...)
		if err != nil {
			w.Close()
			return nil, err
		}
		w.conns = append(w.conns, nc)
	}
	go w.poll()
	return w, nil
}

// LastGone is when a server was last seen to go away; zero if none ever
// was.
func (w *ServerWatch) LastGone() time.Time {
	if t := w.last.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

func (w *ServerWatch) gone(server string) {
	now := time.Now()
	w.last.Store(&now)
	w.onGone(server)
}

// Close stops the watch.
func (w *ServerWatch) Close() {
	select {
	case <-w.stop:
		return
	default:
	}
	close(w.stop)
	if len(w.conns) > 0 {
		<-w.done
	}
	for _, nc := range w.conns {
		nc.Close()
	}
}

// poll follows the first connection's pool: a server the cluster no
// longer tells of has gone.
func (w *ServerWatch) poll() {
	defer close(w.done)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	known := map[string]bool{}
	for {
		now := map[string]bool{}
		for _, s := range w.conns[0].Servers() {
			now[s] = true
		}
		for s := range known {
			if !now[s] {
				w.gone(s)
			}
		}
		known = now
		select {
		case <-w.stop:
			return
		case <-tick.C:
		}
	}
}
