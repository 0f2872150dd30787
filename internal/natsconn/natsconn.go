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

// ServerWatch tells when a server of the NATS cluster goes away: its
// Generation moves on. A reply on its way through a server that died is
// lost without anyone saying so (core NATS is at most once), so a
// reply sent before such a moment is worth sending again. It keeps a
// connection of its own, made with the first of the URLs only, so that the
// cluster's other servers are the ones the server tells of (its
// connect_urls), which nats.go drops from the connection's pool as soon as
// the server says one has gone.
type ServerWatch struct {
	nc     *nats.Conn
	onGone func(server string)
	gen    atomic.Uint64
	stop   chan struct{}
	done   chan struct{}
}

// WatchServers connects to the first of urls (with opts) and follows the
// cluster's servers until Close; onGone (may be nil) hears of each server
// that goes away.
func WatchServers(urls string, onGone func(server string), opts ...nats.Option) (*ServerWatch, error) {
	first, _, _ := strings.Cut(urls, ",")
	if onGone == nil {
		onGone = func(string) {}
	}
	w := &ServerWatch{stop: make(chan struct{}), done: make(chan struct{}), onGone: onGone}
	opts = append(opts, nats.Name("passkeys-worker-servers"), nats.DontRandomize(), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close
				w.gen.Add(1)
				onGone("the one this worker watched through")
			}
		}))
	nc, err := nats.Connect(strings.TrimSpace(first), opts...)
	if err != nil {
		return nil, err
	}
	w.nc = nc
	go w.poll()
	return w, nil
}

// Generation counts the times a server was seen to go away.
func (w *ServerWatch) Generation() uint64 { return w.gen.Load() }

// Close stops the watch.
func (w *ServerWatch) Close() {
	close(w.stop)
	<-w.done
	w.nc.Close()
}

func (w *ServerWatch) poll() {
	defer close(w.done)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	known := map[string]bool{}
	for {
		now := map[string]bool{}
		for _, s := range w.nc.Servers() {
			now[s] = true
		}
		for s := range known {
			if !now[s] {
				w.gen.Add(1)
				w.onGone(s)
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
