package trust

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/clock"
	"github.com/passkeys/worker/internal/jsread"
)

// Local is a worker's side of the control entries: the newest one it has
// read, which its endpoints judge requests by, and its own --jwks file,
// compared with it or, where this worker writes (the embedded default, the
// only worker), written into every partition from it.
type Local struct {
	JS     jetstream.JetStream
	Reader *jsread.Reader
	// Stream is PASSKEYS: its leader's clock is the endpoints' (Now).
	Stream     jetstream.Stream
	Partitions int
	// Own is this worker's --jwks file (or development key), issuer and
	// audience.
	Own *Entry
	// Writes is set where this worker's file goes into the stream when it
	// changes: the embedded default.
	Writes bool
	Log    zerolog.Logger

	newest  atomic.Pointer[newest]
	differs atomic.Bool // passkeys_jwks_file_differs
	leader  atomic.Pointer[reading]

	readMu   sync.Mutex
	readFrom clock.Instant // when the last complete read began
}

// reading is a reading of the stream leader's clock (ts), and this
// worker's monotonic clock when it asked.
type reading struct {
	ts time.Time
	at clock.Instant
}

// readingValid is how long a reading of the leader's clock serves.
const readingValid = 5 * time.Second

// Now is the time a request is judged at (its token's exp and nbf): the
// stream leader's clock, as last read (every second, with the newest key
// set) plus what this worker's monotonic clock has counted since, read
// again first when that reading is old. Never this machine's wall clock:
// a worker whose clock is wrong must not refuse valid tokens, nor answer
// a request otherwise than the stream would a command.
func (l *Local) Now(ctx context.Context) (time.Time, error) {
	r := l.leader.Load()
	if r == nil || clock.Since(r.at) > readingValid {
		if err := l.readClock(ctx); err != nil {
			return time.Time{}, err
		}
		r = l.leader.Load()
	}
	return r.ts.Add(clock.Since(r.at)), nil
}

// readClock reads the stream leader's clock (STREAM.INFO's ts).
func (l *Local) readClock(ctx context.Context) error {
	asked := clock.Now()
	info, err := l.Stream.Info(ctx)
	if err == nil && info.TimeStamp.IsZero() {
		err = errors.New("the NATS server does not tell its time (stream info \"ts\"); it must be 2.10 or later")
	}
	if err != nil {
		return fmt.Errorf("read the stream leader's clock: %w", err)
	}
	l.leader.Store(&reading{ts: info.TimeStamp, at: asked})
	return nil
}

type newest struct {
	seq uint64
	e   *Entry
}

// KeySet is the set of the newest control entry read; nil before one is.
func (l *Local) KeySet() *auth.KeySet {
	if n := l.newest.Load(); n != nil {
		return n.e.KeySet()
	}
	return nil
}

// Rules is the rules version of the newest control entry read (0 before
// one is).
func (l *Local) Rules() int {
	if n := l.newest.Load(); n != nil {
		return n.e.RulesFor(false)
	}
	return 0
}

// Seq is the stream sequence of the newest control entry read.
func (l *Local) Seq() uint64 {
	if n := l.newest.Load(); n != nil {
		return n.seq
	}
	return 0
}

// Differs tells whether this worker's file differs from the newest entry.
func (l *Local) Differs() bool { return l.differs.Load() }

// refresh reads the newest control entry.
func (l *Local) refresh(ctx context.Context) error { return l.Fresh(ctx, clock.Now()) }

// Fresh makes sure the newest control entry was read by a read that began
// at since or later, reading it now unless one did (or one under way,
// waited for, does). An endpoint whose key set refuses a token asks for a
// read since the request came: the operator wrote the entry that trusts a
// new key before any token of it was handed out, so the read finds it,
// where the last poll (every second) may not have yet.
func (l *Local) Fresh(ctx context.Context, since clock.Instant) error {
	l.readMu.Lock()
	defer l.readMu.Unlock()
	if !l.readFrom.Before(since) {
		return nil
	}
	start := clock.Now()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	clockErr := l.readClock(rctx)
	if clockErr != nil {
		l.Log.Debug().Err(clockErr).Msg("could not read the stream leader's clock; trying again")
	}
	seq, body, err := newestEntry(rctx, l.Reader)
	if err != nil {
		return err
	}
	l.readFrom = start
	cur := l.newest.Load()
	if seq == 0 || (cur != nil && cur.seq >= seq) {
		return nil // none, or read already: parsed once
	}
	e, err := Parse(body)
	if err != nil {
		return nil // left out, as the applier leaves it out
	}
	l.newest.Store(&newest{seq: seq, e: e})
	if cur == nil || !cur.e.Same(e) {
		l.Log.Info().Uint64("stream_seq", seq).Int("keys", len(e.Keys.Keys)).Str("issuer", e.Issuer).
			Msg("newest key set read: every partition's commands after its control entry are judged by it")
	}
	return nil
}

// Load reads the newest control entry at start. Where the stream has none,
// a worker whose NATS user may write gives every partition its first: the
// old key history's sets, where there is one, else its own file; others
// wait for `worker provision --jwks`. The embedded default then writes its
// own file where it differs. An issuer or audience that differs from the
// newest entry's refuses the start; keys that differ are a warning and a
// metric.
func (l *Local) Load(ctx context.Context) error {
	for warned := false; ; {
		err := l.refresh(ctx)
		if err == nil && l.newest.Load() == nil {
			if err = l.seed(ctx); err != nil && !warned {
				l.Log.Warn().Err(err).Msg("the stream holds no key set and this worker may not write one: waiting for `worker provision --jwks FILE --issuer ISS --audience AUD`")
				warned = true
			}
		} else if err == nil && l.Writes {
			// Partitions a seeding interrupted before them get partition
			// 0's first.
			if _, err = Seed(ctx, l.JS, l.Reader.Last, l.Partitions, nil); err == nil {
				err = l.write(ctx, "the worker's key set file changed")
			}
		}
		if err == nil && l.newest.Load() != nil {
			return l.compare()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("key sets: %w", ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
}

// seed gives the partitions their first control entries (Seed).
func (l *Local) seed(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	eras, err := Legacy(sctx, l.JS, l.Log)
	if err != nil {
		return err
	}
	first, err := FromLegacy(eras, l.Own.Issuer, l.Own.Audience)
	if err != nil || first == nil {
		first = l.Own
	}
	seeded, err := Seed(sctx, l.JS, l.Reader.Last, l.Partitions, first)
	if seeded {
		l.Log.Info().Int("keys", len(first.Keys.Keys)).Int("old_key_sets", len(eras)).Msg("the partitions' first key set written")
	}
	if err != nil {
		return err
	}
	return l.refresh(ctx)
}

// write makes this worker's own set every partition's newest (Write).
func (l *Local) write(ctx context.Context, why string) error {
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := Write(wctx, l.JS, l.Reader.Last, l.Partitions, l.Own)
	if err != nil {
		return err
	}
	if n > 0 {
		l.Log.Info().Int("partitions", n).Str("why", why).Int("keys", len(l.Own.Keys.Keys)).Msg("key set written into the partitions")
	}
	return l.refresh(ctx)
}

// compare holds this worker's file up to the newest entry: an issuer or
// audience that differs is an error (the worker would refuse every token
// it is sent); keys that differ a warning and the metric.
func (l *Local) compare() error {
	n := l.newest.Load()
	if n == nil {
		return nil
	}
	if n.e.Issuer != l.Own.Issuer || n.e.Audience != l.Own.Audience {
		return fmt.Errorf("the key set in force (set by `worker provision --jwks`) requires issuer %q and audience %q, "+
			"but this worker was started with --issuer %q --audience %q: start it with those, or provision new ones",
			n.e.Issuer, n.e.Audience, l.Own.Issuer, l.Own.Audience)
	}
	differs := !n.e.Same(l.Own)
	if l.differs.Swap(differs) != differs || differs {
		ev := l.Log.Info()
		if differs {
			ev = l.Log.Warn()
		}
		ev.Bool("differs", differs).Msg("this worker's --jwks file compared with the newest key set, which every worker judges by")
	}
	return nil
}

// Run reads the newest control entry every second, and this worker's
// --jwks file again on SIGHUP and whenever its content changes (checked
// every interval; no file: none), until ctx ends. In the embedded default a new file is
// written into the partitions; elsewhere it is only compared (an operator
// rotates with `worker provision --jwks`). A file that does not load
// changes nothing.
func (l *Local) Run(ctx context.Context, path string, interval time.Duration, hup <-chan os.Signal) {
	read := time.NewTicker(time.Second)
	defer read.Stop()
	var checks <-chan time.Time
	if path != "" {
		check := time.NewTicker(interval)
		defer check.Stop()
		checks = check.C
	}
	lastHash := fileHash(path)
	for {
		var why string
		select {
		case <-ctx.Done():
			return
		case <-read.C:
			if err := l.refresh(ctx); err != nil && ctx.Err() == nil {
				l.Log.Debug().Err(err).Msg("could not read the newest key set; trying again")
			}
			continue
		case <-hup:
			why = "SIGHUP"
		case <-checks:
			if h := fileHash(path); h == nil || bytes.Equal(h, lastHash) {
				_ = l.compare()
				continue
			}
			why = "file changed"
		}
		lastHash = fileHash(path)
		l.reload(ctx, path, why)
	}
}

// reload reads the --jwks file at path again.
func (l *Local) reload(ctx context.Context, path, why string) {
	keys, err := auth.LoadJWKS(path)
	var own *Entry
	if err == nil {
		own, err = NewEntry(keys, l.Own.Issuer, l.Own.Audience, l.Own.Verify)
		if own != nil {
			own.Rules = l.Own.Rules
		}
	}
	if err == nil {
		l.Own = own
		if l.Writes {
			err = l.write(ctx, why)
		}
	}
	if err == nil {
		err = l.compare()
	}
	if err != nil {
		l.Log.Error().Err(err).Str("jwks", path).Str("trigger", why).Msg("JWKS not reloaded; the key sets are unchanged")
		return
	}
	kids := make([]string, 0, len(keys.Keys))
	for _, key := range keys.Keys {
		kids = append(kids, key.KeyID)
	}
	l.Log.Info().Str("jwks", path).Str("trigger", why).Strs("kids", kids).Bool("written", l.Writes).Msg("JWKS reloaded")
}

func fileHash(path string) []byte {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	h := sha256.Sum256(raw)
	return h[:]
}
