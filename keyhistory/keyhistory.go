// Package keyhistory keeps the history of the key sets that verify
// callers' tokens: one history for all workers, in the append-only stream
// KV_PASSKEYS_JWKS, set by an operator (`worker provision --jwks`) and read
// by the workers, so that every worker, at any time, judges a command by
// the same keys: the set in force at the command's stream timestamp.
//
// An entry, once stored, means the same to every worker that ever reads
// it: the stream keeps every message and refuses deletes, purges and
// roll-ups; the first entry under a key stands (a key written again, or a
// delete marker, is reported and changes nothing); and an entry of the
// version before (e.<unix nanos>) counts only where that version could
// have written it: before the first provisioned set, and never in force
// before it was stored.
//
// When a set takes effect is decided by the NATS server, never by a
// worker's clock: Margin after the server stored the entry (the first set
// ever is in force from the beginning). A worker judges a command only
// once it knows it has read every entry that could be in force at the
// command's timestamp (Await): it asks the bucket's stream leader for its
// last sequence and its clock (STREAM.INFO), reads every entry up to that
// sequence, and so knows that any entry it has not read was stored after
// that clock reading, and takes effect Margin later at the earliest.
package keyhistory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/clock"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/topology"
)

// Margin is how long after the NATS server stored a key set it takes
// effect: the time every worker has to learn of it before the first
// command it governs could be stored, and what covers the differences
// between the clocks of the NATS servers (MaxClockSkew of it).
const Margin = 5 * time.Second

// MaxClockSkew bounds how much earlier than a reading of the leader's clock
// an entry that reading did not include may be stamped: the clocks of two
// NATS servers that lead the key bucket's stream in turn may differ by that
// much, and an entry is stamped when it is proposed, a Raft round before it
// is stored. A worker reads the history again before it judges a command
// stamped later than the last reading plus Margin less this, and reports an
// entry that broke the bound.
const MaxClockSkew = time.Second

// entryPrefix is the key prefix of the entries `worker provision` writes:
// set.00000001, set.00000002, ... in the order they were provisioned.
const entryPrefix = "set."

// legacyPrefix is the key prefix of the entries the version before wrote:
// e.<unix nanoseconds from which the set was in force>, a bare JWKS.
const legacyPrefix = "e."

// entryKey is the key of the n-th provisioned entry.
func entryKey(n int) string { return fmt.Sprintf("%s%08d", entryPrefix, n) }

// Entry is one key set of the history, as stored.
type Entry struct {
	Issuer   string             `json:"issuer"`
	Audience string             `json:"audience"`
	Keys     jose.JSONWebKeySet `json:"jwks"`
}

// Same tells whether e trusts exactly what o does.
func (e Entry) Same(o Entry) bool {
	a, err1 := json.Marshal(e)
	b, err2 := json.Marshal(o)
	return err1 == nil && err2 == nil && string(a) == string(b)
}

// stored is an entry as read from the bucket's stream.
type stored struct {
	key     string
	seq     uint64
	created time.Time // the server's timestamp
	value   []byte
}

// History is a worker's view of the key history, kept in step with the
// bucket, feeding a Verifier.
type History struct {
	js     jetstream.JetStream
	stream jetstream.Stream // the history's
	reader *jsread.Reader
	v      *auth.Verifier
	log    zerolog.Logger

	mu      sync.Mutex
	entries []stored
	seen    map[string]bool // keys already read (a rewritten key is ignored)
	lastKey int             // the highest n of any set.n ever written, delete markers included
	read    uint64          // the last stream sequence read
	known   time.Time       // the leader's clock when every entry up to read was stored
	knownAt clock.Instant   // this worker's clock when it asked for known
	// offsets are the leader's clock readings of the last anchorWindow,
	// each less this worker's clock when it asked: the slowest caps a
	// reading that runs ahead.
	offsets  []offset
	nowFloor time.Time // Now never returns an earlier time than it did
	eras     []auth.KeyEra
	latest   Entry // the newest entry, decoded
	refresh  chan struct{}
	lastWarn time.Time
}

// Open returns the history kept in stream st, feeding v (nil: none, for
// the provisioner). Nothing is read until Load.
func Open(js jetstream.JetStream, st jetstream.Stream, v *auth.Verifier, log zerolog.Logger) *History {
	return &History{js: js, stream: st, reader: jsread.New(js, topology.KeyStream, false), v: v, log: log,
		seen: map[string]bool{}, refresh: make(chan struct{}, 1)}
}

// ErrEmpty tells that the history holds no key set yet.
var ErrEmpty = errors.New("the key history is empty: run `worker provision --jwks FILE --issuer ISS --audience AUD`")

// Load reads the history from its beginning and hands it to the
// Verifier. It returns ErrEmpty when there is no key set yet.
func (h *History) Load(ctx context.Context) error {
	if err := h.catchUpOnce(ctx); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.eras) == 0 {
		return ErrEmpty
	}
	return nil
}

// catchUp asks the leader how far the bucket's stream goes and when,
// reads what it has not read yet, and moves the barrier (known) on.
func (h *History) catchUp(ctx context.Context) error {
	asked := clock.Now()
	info, err := h.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("key history: %w", err)
	}
	if info.Cluster != nil && info.Cluster.Leader == "" {
		return errors.New("key history: the bucket's stream has no leader now")
	}
	if info.TimeStamp.IsZero() {
		return errors.New("key history: the NATS server does not tell its time (stream info \"ts\"); it must be 2.10 or later")
	}
	h.mu.Lock()
	from := h.read + 1
	h.mu.Unlock()
	fresh, err := h.readFrom(ctx, from, info.State.LastSeq)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	before := h.known
	h.read = max(h.read, info.State.LastSeq)
	h.known, h.knownAt = h.barrier(info.TimeStamp, asked), asked
	added := h.add(fresh, before)
	if !added {
		return nil
	}
	eras, latest := h.erasOf(h.entries)
	if len(eras) == 0 {
		return nil
	}
	if h.v != nil {
		if err := h.v.SetHistory(eras); err != nil {
			return fmt.Errorf("key history: %w", err)
		}
	}
	for _, e := range eras[min(len(h.eras), len(eras)):] {
		h.log.Info().Time("in_force_from", e.From).Int("keys", len(e.Keys.Keys)).Str("issuer", e.Issuer).Msg("key set read from the key history")
	}
	h.eras, h.latest = eras, latest
	return nil
}

// readFrom reads the history's entries from sequence from up to last; a
// delete marker is reported and left out.
func (h *History) readFrom(ctx context.Context, from, last uint64) ([]stored, error) {
	var fresh []stored
	for seq := from; seq <= last; {
		m, err := h.reader.Next(ctx, seq, topology.KeyPrefix+".>")
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("key history: %w", err)
		}
		if m.Sequence > last {
			break
		}
		h.noteKey(strings.TrimPrefix(m.Subject, topology.KeyPrefix+"."))
		if op := m.Header.Get("KV-Operation"); op == "" {
			fresh = append(fresh, stored{key: strings.TrimPrefix(m.Subject, topology.KeyPrefix+"."), seq: m.Sequence,
				created: m.Time, value: m.Data})
		} else {
			h.log.Error().Str("entry", m.Subject).Str("operation", op).
				Msg("a delete marker in the key history changes nothing: an entry stands once stored; provision a new set instead")
		}
		seq = m.Sequence + 1
	}
	return fresh, nil
}

// add takes the entries read under keys never seen before (the first entry
// under a key stands), reporting one stamped well before the last reading
// that did not hold it. h.mu is held. It tells whether any was added.
func (h *History) add(fresh []stored, before time.Time) bool {
	added := false
	for _, e := range fresh {
		if h.seen[e.key] {
			h.log.Error().Str("entry", e.key).Uint64("stream_seq", e.seq).
				Msg("an entry of the key history was written again; the first one stands, this one changes nothing")
			continue
		}
		if e.created.Before(before.Add(-MaxClockSkew)) {
			// Stamped well before a reading that did not hold it: a
			// leader's clock that went back, or a write that took over
			// MaxClockSkew to be stored.
			h.log.Error().Str("entry", e.key).Time("stamped", e.created).Time("read_before", before).
				Msg("a key set was stored later than its timestamp says; commands stored in between may have been judged by the set before it: check the NATS servers' clocks")
		}
		h.seen[e.key] = true
		h.entries = append(h.entries, e)
		added = true
	}
	return added
}

// erasOf turns entries (in stream order) into the eras they put in force:
// deterministic, so every worker computes the same from the same history.
// A provisioned set is in force Margin after the server stored it (the
// first of the whole history from the beginning), never before the set
// provisioned ahead of it; a set of the version before, from the time its
// key names. An entry that is not a key set is left out, on every worker
// alike.
func (h *History) erasOf(entries []stored) ([]auth.KeyEra, Entry) {
	var eras []auth.KeyEra
	var latest Entry
	provisioned := false
	for _, e := range entries {
		era, ent, err := decode(e)
		if err == nil && strings.HasPrefix(e.key, legacyPrefix) {
			err = legacyAllowed(era, e, provisioned, len(eras) == 0)
		}
		if err != nil {
			h.log.Error().Err(err).Str("entry", e.key).Msg("an entry of the key history is not a key set in force; it is left out")
			continue
		}
		if strings.HasPrefix(e.key, entryPrefix) {
			provisioned = true
			era.From = e.created.Add(Margin)
			if len(eras) == 0 {
				era.From = time.Time{}
			}
		}
		if n := len(eras); n > 0 && era.From.Before(eras[n-1].From) {
			era.From = eras[n-1].From
		}
		eras = append(eras, era)
		latest = ent
	}
	return eras, latest
}

// legacyAllowed tells whether an entry of the version before counts:
// only before the first provisioned set (that version wrote no other), and
// only in force from when it was stored or later (it wrote its time of
// effect 5 s ahead, or zero for the first entry of all).
func legacyAllowed(era auth.KeyEra, e stored, provisioned, first bool) error {
	switch {
	case provisioned:
		return errors.New("an entry in the form of the version before, after a provisioned set")
	case era.From.IsZero() && !first:
		return errors.New("an entry of the version before in force from the beginning, after another")
	case !era.From.IsZero() && era.From.Before(e.created):
		return errors.New("an entry of the version before in force before it was stored")
	}
	return nil
}

// decode reads one stored entry.
func decode(e stored) (auth.KeyEra, Entry, error) {
	switch {
	case strings.HasPrefix(e.key, entryPrefix):
		var ent Entry
		if err := json.Unmarshal(e.value, &ent); err != nil {
			return auth.KeyEra{}, ent, err
		}
		if err := auth.CheckKeySet(ent.Keys); err != nil {
			return auth.KeyEra{}, ent, err
		}
		if ent.Issuer == "" || ent.Audience == "" {
			return auth.KeyEra{}, ent, errors.New("no issuer or no audience")
		}
		return auth.KeyEra{Keys: ent.Keys, Issuer: ent.Issuer, Audience: ent.Audience}, ent, nil
	case strings.HasPrefix(e.key, legacyPrefix):
		ns, err := strconv.ParseInt(strings.TrimPrefix(e.key, legacyPrefix), 10, 64)
		if err != nil {
			return auth.KeyEra{}, Entry{}, err
		}
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(e.value, &set); err != nil {
			return auth.KeyEra{}, Entry{}, err
		}
		if err := auth.CheckKeySet(set); err != nil {
			return auth.KeyEra{}, Entry{}, err
		}
		era := auth.KeyEra{Keys: set}
		if ns != 0 {
			era.From = time.Unix(0, ns).UTC()
		}
		return era, Entry{Keys: set}, nil
	}
	return auth.KeyEra{}, Entry{}, errors.New("not a key of the history")
}

// Latest is the newest key set of the history (the one in force, or soon
// to be); ok is false while the history is empty.
func (h *History) Latest() (Entry, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.latest, len(h.eras) > 0
}

// Sets is how many key sets the history holds.
func (h *History) Sets() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.eras)
}

// offset is a reading of the leader's clock less this worker's monotonic
// clock when it asked (at).
type offset struct {
	d  time.Duration
	at clock.Instant
}

// anchorWindow is how long a reading of a slow leader's clock caps the
// readings after it.
const anchorWindow = 5 * time.Minute

// barrier is the reading of the leader's clock that a catch-up which
// asked at asked may take as its barrier (known). Each reading replaces the
// last, also when it is earlier (the stream's leader changed to a server
// whose clock is behind: every command stamped after it waits for the next
// reading). A reading that runs ahead of the slowest leader's clock read in
// the last anchorWindow (moved on by what this worker counted since) by
// more than MaxClockSkew is capped there, unless it agrees with this
// machine's own clock: a leader whose clock runs ahead must not make this
// worker believe it has read entries that a server with a correct clock
// would stamp later, a run of readings cannot push the cap on, and one slow
// leader holds nothing back for longer than the window. Called with h.mu
// held.
func (h *History) barrier(reading time.Time, asked clock.Instant) time.Time {
	return h.barrierAt(reading, asked, clock.Wall())
}

// barrierAt is barrier with this machine's wall clock at wall.
func (h *History) barrierAt(reading time.Time, asked clock.Instant, wall time.Time) time.Time {
	d := time.Duration(reading.UnixNano() - int64(asked))
	keep := h.offsets[:0]
	slowest, any := time.Duration(0), false
	for _, o := range h.offsets {
		if time.Duration(asked-o.at) > anchorWindow {
			continue
		}
		keep = append(keep, o)
		if !any || o.d < slowest {
			slowest, any = o.d, true
		}
	}
	h.offsets = append(keep, offset{d: d, at: asked})
	if !any {
		return reading
	}
	expected := time.Unix(0, int64(asked)+int64(slowest))
	switch {
	case reading.After(expected.Add(MaxClockSkew)) && reading.After(wall.Add(MaxClockSkew)):
		limit := expected
		if wall.After(limit) {
			limit = wall
		}
		limit = limit.Add(MaxClockSkew)
		h.log.Error().Time("reading", reading).Time("limit", limit).
			Msg("the key history's leader's clock is ahead of the slowest one this worker has read lately, and of this machine's, by more than the servers' clocks may differ; the history's barrier stays at the limit")
		return limit
	case reading.Before(expected.Add(-MaxClockSkew)):
		h.log.Warn().Time("reading", reading).Time("expected", expected).
			Msg("the key history's leader's clock is behind its last readings (a new leader, or a clock set back): commands stamped after it wait for the next reading")
	}
	return reading
}

// covers tells whether every entry that could be in force at t has been
// read.
func (h *History) covers(t time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.known.IsZero() && t.Before(h.known.Add(Margin-MaxClockSkew))
}

// Await returns once every key set that could be in force at t (a
// command's stream timestamp) has been read, reading the history again as
// often as it takes, or with ctx's error. After a pause or a reconnect the
// last reading is old, and the history is read again before any command
// stored since is judged.
func (h *History) Await(ctx context.Context, t time.Time) error {
	for attempt := 0; !h.covers(t); attempt++ {
		if err := h.catchUpOnce(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			h.warn(err, "could not read the key history; commands wait until it is read")
		} else if h.covers(t) {
			return nil
		} else {
			h.warn(nil, "a command is stamped later than the key bucket's leader's clock says it is: the NATS servers' clocks differ; it waits")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(time.Duration(attempt+1)*50*time.Millisecond, time.Second)):
		}
	}
	return nil
}

// Now is the time by the key bucket's leader's clock (its last reading
// plus what this worker's monotonic clock has counted since), read again
// first when the last reading could miss a key set in force now: the time
// an endpoint judges a request at.
func (h *History) Now(ctx context.Context) (time.Time, error) {
	for {
		h.mu.Lock()
		known, since := h.known, clock.Since(h.knownAt)
		if !known.IsZero() && since < Margin-MaxClockSkew-time.Second {
			// Never earlier than a time already given: a new leader whose
			// clock is a little behind must not bring a retired key back.
			// (A regression of more than the servers' clocks may differ
			// is followed, and logged: a clock far ahead must not hold
			// the endpoints' time for as long as it was ahead.)
			now := known.Add(since)
			switch {
			case !now.Before(h.nowFloor):
			case h.nowFloor.Sub(now) <= MaxClockSkew:
				now = h.nowFloor
			default:
				h.log.Warn().Time("now", now).Time("before", h.nowFloor).Msg("the key history's clock went back by more than the servers' clocks may differ; following it")
			}
			h.nowFloor = now
			h.mu.Unlock()
			return now, nil
		}
		h.mu.Unlock()
		if err := h.catchUpOnce(ctx); err != nil {
			return time.Time{}, err
		}
	}
}

// catchUpOnce is catchUp with one caller at a time: the others wait for
// its result instead of asking too.
func (h *History) catchUpOnce(ctx context.Context) error {
	select {
	case h.refresh <- struct{}{}:
		defer func() { <-h.refresh }()
	case <-ctx.Done():
		return ctx.Err()
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return h.catchUp(cctx)
}

// warn logs a reason to wait, at most every 5 s.
func (h *History) warn(err error, msg string) {
	h.mu.Lock()
	due := time.Since(h.lastWarn) > 5*time.Second
	if due {
		h.lastWarn = time.Now()
	}
	h.mu.Unlock()
	if due {
		h.log.Warn().Err(err).Msg(msg)
	}
}

// Run reads the history every second until ctx ends, so that a new key
// set is known long before it takes effect and Await rarely waits.
func (h *History) Run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := h.catchUpOnce(ctx); err != nil && ctx.Err() == nil {
			h.warn(err, "could not read the key history; trying again")
		}
	}
}

// Seed makes e the history's first key set when the history is empty, as a
// worker whose NATS user may write does at start. It returns false when
// the history had a set already (another worker's, perhaps one that
// differs: the history wins).
func (h *History) Seed(ctx context.Context, e Entry) (bool, error) {
	raw, err := encodeEntry(e)
	if err != nil {
		return false, err
	}
	if err := h.catchUpOnce(ctx); err != nil {
		return false, err
	}
	h.mu.Lock()
	n := h.provisioned()
	h.mu.Unlock()
	if h.Sets() > 0 {
		return false, nil
	}
	created, err := h.create(ctx, entryKey(n+1), raw)
	if err != nil {
		return false, err
	}
	return created, h.catchUpOnce(ctx)
}

// create stores raw under key, unless the key has a message already (a
// concurrent writer's, or anything ever written there): created is false
// then.
func (h *History) create(ctx context.Context, key string, raw []byte) (created bool, err error) {
	msg := nats.NewMsg(topology.KeyPrefix + "." + key)
	msg.Data = raw
	_, err = h.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(0))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("key history: write %s: %w", key, err)
	}
	return true, nil
}

func encodeEntry(e Entry) ([]byte, error) {
	if err := auth.CheckKeySet(e.Keys); err != nil {
		return nil, err
	}
	if e.Issuer == "" || e.Audience == "" {
		return nil, errors.New("key history: a key set needs its issuer and audience")
	}
	return json.Marshal(e)
}

// Append adds e to the history unless it is the newest entry already, as
// `worker provision --jwks` does (and the embedded default's worker, the
// only one, on its own reload). It returns the entry's key ("" when e was
// in force already) and when it takes effect by the server's clock.
func (h *History) Append(ctx context.Context, e Entry) (string, time.Time, error) {
	raw, err := encodeEntry(e)
	if err != nil {
		return "", time.Time{}, err
	}
	for try := 0; ; try++ {
		if try == 10 {
			return "", time.Time{}, errors.New("key history: could not add a key set: other writers kept coming first")
		}
		if err := h.catchUpOnce(ctx); err != nil {
			return "", time.Time{}, err
		}
		h.mu.Lock()
		same, n := len(h.eras) > 0 && h.latest.Same(e), h.provisioned()
		h.mu.Unlock()
		if same {
			return "", time.Time{}, nil
		}
		key := entryKey(n + 1)
		created, err := h.create(ctx, key, raw)
		if err != nil {
			return "", time.Time{}, err
		}
		if !created {
			continue // another operator's entry came first: read it, then decide
		}
		if err := h.catchUpOnce(ctx); err != nil {
			return key, time.Time{}, err
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		return key, h.eras[len(h.eras)-1].From, nil
	}
}

// noteKey keeps the highest n of the keys set.n read: the next entry
// goes under the next.
func (h *History) noteKey(key string) {
	k, ok := strings.CutPrefix(key, entryPrefix)
	if !ok {
		return
	}
	if i, err := strconv.Atoi(k); err == nil {
		h.mu.Lock()
		h.lastKey = max(h.lastKey, i)
		h.mu.Unlock()
	}
}

// provisioned is the highest n of every key set.n ever written, entries
// written again and delete markers included. Called with h.mu held.
func (h *History) provisioned() int { return h.lastKey }
