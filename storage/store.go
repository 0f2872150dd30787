// Package storage keeps users and command outcomes in a bbolt file. The
// store owns its transactions: a caller runs its whole decision inside one
// Update, so the check, the change, the sequence and the outcome record
// commit together or not at all.
package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/passkeys/worker/internal/binrec"
	"github.com/passkeys/worker/passkey"
)

// Bucket names. Every bucket is created when the store is opened, so a
// transaction never has to.
var (
	// bucketUsers maps a user id to its encoded passkey.User, and a user id,
	// a zero byte and an outcome key to the encoded Outcome of one of that
	// user's commands (codec.go). A user's outcomes sort right after the
	// user, so a command's whole effect usually lands on one leaf page: each
	// page a commit writes is one more disk write its fsync waits for.
	bucketUsers = []byte("users")
	// bucketOutcomes maps an outcome key to the encoded Outcome of a command
	// that names no valid user, and holds the records of earlier versions,
	// which kept every outcome here.
	bucketOutcomes = []byte("outcomes")
	// bucketMeta holds single values such as the last applied stream sequence.
	bucketMeta = []byte("meta")
	// bucketOutbox holds the events of applied changes not yet published:
	// a user id, a zero byte and the change's sequence (big-endian, so a
	// user's events sort in order) to the event's document. An event is
	// written in the same transaction as its change and deleted once
	// JetStream has acknowledged it.
	bucketOutbox = []byte("outbox")
	// bucketControl maps the stream sequence (big-endian) of each control
	// entry of the partition (the key sets and rules in force from there
	// on, written by the operator into the stream) to its body, as stored.
	bucketControl = []byte("control")
	// bucketExpiryV1 was an index of outcomes by expiry; pruning now walks
	// the records instead, and Open deletes it.
	bucketExpiryV1 = []byte("outcome_expiry")
)

var (
	keyAppliedSeq   = []byte("applied_stream_seq")
	keyOutcomeCount = []byte("outcome_count")
	keyStream       = []byte("stream")
	keyAppliedAt    = []byte("applied_at")
	keyRefused      = []byte("refused")
)

// DefaultTimeout is how long Open waits for another process's lock on the file.
const DefaultTimeout = 2 * time.Second

// Options tune Open.
type Options struct {
	// Timeout bounds the wait for the file lock; zero means DefaultTimeout.
	Timeout time.Duration
	// NoSync skips fsync on commit: a commit is then durable in the stream
	// that the store is the state of (and its snapshots), not in the file.
	// While such a store is open, a marker file beside it (path + ".open")
	// says so; a stop that does not close it (a crash, a power cut) leaves
	// the marker, and the store is not to be trusted again (Unclean): it
	// may have lost commits, or be torn, which a power cut cannot let
	// bbolt notice. The runner rebuilds it from the snapshot and the stream.
	NoSync bool
}

// Unclean tells whether the store at path was left open without fsync by
// a stop that did not close it (Options.NoSync): its file may lack
// committed work, or be torn.
func Unclean(path string) bool {
	_, err := os.Stat(path + openMarker)
	return !errors.Is(err, os.ErrNotExist) // a marker that cannot be read is not taken for none
}

// Discard removes the store at path and its marker, the marker last, for
// a store that Unclean says is not to be trusted.
func Discard(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := SyncDir(filepath.Dir(path)); err != nil {
		return err
	}
	if err := os.Remove(path + openMarker); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// openMarker is the suffix of the file that is there while a store runs
// without fsync.
const openMarker = ".open"

// SyncDir makes the entries of dir durable: a file made, renamed or
// removed.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// markOpen puts path's marker in place, durably, before the first commit
// without fsync.
func markOpen(path string) error {
	f, err := os.OpenFile(path+openMarker, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// ErrLocked is returned by Open when another process holds the file.
var ErrLocked = errors.New("storage: the data file is locked by another process")

// Store is an open bbolt file.
type Store struct {
	db     *bolt.DB
	path   string
	noSync bool // Options.NoSync

	// deletes are outbox keys whose events were published, to be deleted
	// with the next write transaction (DeleteEventsLater); they stay here
	// until it has committed.
	deleteMu sync.Mutex
	deletes  map[string]struct{}
}

// ErrCorrupt is wrapped by every error about a damaged data file or record:
// what the store read is not what it wrote.
var ErrCorrupt = binrec.ErrCorrupt

// damaged is the error for a data file bbolt panicked on.
func damaged(path string, r any) error {
	return fmt.Errorf("the data file %s is damaged (%v); stop the worker and restore the file from a backup "+
		"(README, \"Backup and restore\"): the worker then replays from the stream what the backup lacks [%w]", path, r, ErrCorrupt)
}

// Open opens or creates the store at path, creating its directory (0700),
// the file (0600) and every bucket. A damaged file is refused with an
// error that wraps ErrCorrupt, not a panic: opening walks every page (the
// freelist is rebuilt from them, NoFreelistSync), so damage anywhere in the
// tree shows here. (Some kinds of damage bbolt's walk reports by panicking
// in a goroutine of its own, which no recover can catch; those still end
// the process with bbolt's message.)
func Open(path string, opts Options) (s *Store, err error) {
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, damaged(path, r)
		}
	}()
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("storage: create directory for %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      opts.Timeout,
		NoSync:       opts.NoSync,
		FreelistType: bolt.FreelistMapType,
		// As etcd does: the freelist is rebuilt at open instead of written at
		// every commit, which saves pages (and fsync time) on every commit.
		NoFreelistSync: true,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s (waited %s)", ErrLocked, path, opts.Timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("storage: open %s: %w", path, err)
	}
	if opts.NoSync {
		// Under the file's lock, before its first commit without fsync.
		if err := markOpen(path); err != nil {
			db.Close()
			return nil, fmt.Errorf("storage: mark %s open: %w", path, err)
		}
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketUsers, bucketOutcomes, bucketMeta, bucketOutbox, bucketControl} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		if tx.Bucket(bucketExpiryV1) != nil {
			return tx.DeleteBucket(bucketExpiryV1)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("storage: initialise %s: %w", path, err)
	}
	return &Store{db: db, path: path, noSync: opts.NoSync}, nil
}

// Path is the file the store lives in.
func (s *Store) Path() string { return s.path }

// Close closes the file; one opened with NoSync is synced first, and its
// marker removed once it is.
func (s *Store) Close() error {
	if !s.noSync {
		return s.db.Close()
	}
	if err := errors.Join(s.db.Sync(), s.db.Close()); err != nil {
		return err // the marker stays: the file is not trusted again
	}
	if err := os.Remove(s.path + openMarker); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(s.path))
}

// Update runs fn in one read-write transaction, committed (and synced) when
// fn returns nil and rolled back otherwise.
// It also deletes the outbox keys DeleteEventsLater queued: a published
// event goes out of the outbox with the next change instead of costing a
// commit (and an fsync) of its own; on a failure they stay queued.
func (s *Store) Update(fn func(*Tx) error) error {
	keys := s.queuedDeletes()
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := fn(&Tx{tx: tx}); err != nil {
			return err
		}
		for _, k := range keys {
			if err := tx.Bucket(bucketOutbox).Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil && len(keys) > 0 {
		s.deleteMu.Lock()
		for _, k := range keys {
			delete(s.deletes, string(k))
		}
		s.deleteMu.Unlock()
	}
	return err
}

// queuedDeletes returns the keys DeleteEventsLater queued. They stay
// queued, so PendingEvents passes them over, until a write transaction
// that deletes them has committed.
func (s *Store) queuedDeletes() [][]byte {
	s.deleteMu.Lock()
	defer s.deleteMu.Unlock()
	keys := make([][]byte, 0, len(s.deletes))
	for k := range s.deletes {
		keys = append(keys, []byte(k))
	}
	return keys
}

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// AppliedSeq is Tx.AppliedSeq in a read transaction of its own.
func (s *Store) AppliedSeq() (uint64, error) {
	var applied uint64
	err := s.View(func(tx *Tx) error { applied = tx.AppliedSeq(); return nil })
	return applied, err
}

// Tx is a transaction on the store. Values it returns are copies, safe to
// keep after the transaction ends.
type Tx struct {
	tx *bolt.Tx
}

// User returns the user with id, or nil when the store has none.
func (t *Tx) User(id string) (*passkey.User, error) {
	raw := t.tx.Bucket(bucketUsers).Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	u, err := decodeUser(raw)
	if err != nil {
		return nil, fmt.Errorf("storage: user %q: %w", id, err)
	}
	return u, nil
}

// PutUser writes u.
func (t *Tx) PutUser(u *passkey.User) error {
	if u.ID == "" || strings.IndexByte(u.ID, 0) >= 0 {
		return fmt.Errorf("storage: user id %q: %w", u.ID, ErrBadUserID)
	}
	return t.users().Put([]byte(u.ID), encodeUser(u))
}

// usersFill is how full bbolt fills the users bucket's pages when it
// splits them, instead of its default half: users mostly arrive in key
// ranges (a sync of many users, their outcomes after them), which would
// leave every page half empty, doubling the file and the memory it maps.
const usersFill = 0.9

// users is the users bucket, to write to.
func (t *Tx) users() *bolt.Bucket {
	b := t.tx.Bucket(bucketUsers)
	b.FillPercent = usersFill
	return b
}

// ErrBadUserID is returned for a user id the store cannot key: empty, or
// holding the zero byte that separates a user from its outcome records.
// The service and the handler never pass one (passkey.ValidateUserID refuses them).
var ErrBadUserID = errors.New("empty user id, or one with a zero byte")

// Outcome is the answer a command got, kept so that a repeat of the
// command gets the same reply, byte for byte.
type Outcome struct {
	// Subject is the command's subject: a key reused for another command
	// must not be answered with this outcome.
	Subject string
	// Fingerprint identifies the command (passkey.Fingerprint): only a
	// command with the same fingerprint is a repeat. Nil in records written
	// before fingerprints were kept; those compare by subject alone.
	Fingerprint []byte
	// Answer is what the command got; the reply's bytes are a function of
	// it, so a repeat gets the same bytes.
	Answer passkey.Answer
	// Expires is when the record may be pruned.
	Expires time.Time
}

// Outcome returns the outcome kept for key among userID's records, or nil.
// userID is the user the command names, or "" for a command that names no
// valid user. A record an earlier version kept outside the user's records
// is found too.
func (t *Tx) Outcome(userID string, key []byte) (*Outcome, error) {
	var raw []byte
	if userID != "" {
		b, k, err := t.outcomeLocation(userID, key)
		if err != nil {
			return nil, err
		}
		raw = b.Get(k)
	}
	if raw == nil {
		raw = t.tx.Bucket(bucketOutcomes).Get(key)
	}
	if raw == nil {
		return nil, nil
	}
	o, err := decodeOutcome(raw)
	if err != nil {
		return nil, fmt.Errorf("storage: outcome record: %w", err)
	}
	return o, nil
}

// PutOutcome keeps o for key among userID's records until o.Expires (and
// until the next PruneOutcomes after it).
func (t *Tx) PutOutcome(userID string, key []byte, o *Outcome) error {
	b, k, err := t.outcomeLocation(userID, key)
	if err != nil {
		return err
	}
	if b.Get(k) == nil {
		if err := t.addOutcomeCount(1); err != nil {
			return err
		}
	}
	return b.Put(k, encodeOutcome(o))
}

// outcomeLocation is the bucket and the key of an outcome record.
func (t *Tx) outcomeLocation(userID string, key []byte) (*bolt.Bucket, []byte, error) {
	if len(key) == 0 {
		return nil, nil, errors.New("storage: empty outcome key")
	}
	if userID == "" {
		return t.tx.Bucket(bucketOutcomes), key, nil
	}
	if strings.IndexByte(userID, 0) >= 0 {
		return nil, nil, fmt.Errorf("storage: user id %q: %w", userID, ErrBadUserID)
	}
	k := make([]byte, 0, len(userID)+1+len(key))
	k = append(append(append(k, userID...), 0), key...)
	return t.users(), k, nil
}

// addOutcomeCount keeps the number of outcome records, so that metrics can
// report it without walking the bucket.
func (t *Tx) addOutcomeCount(delta int64) error {
	n := int64(t.metaUint(keyOutcomeCount)) + delta
	return t.putMetaUint(keyOutcomeCount, uint64(max(n, 0)))
}

// PutControl keeps the control entry stored in the stream at seq.
func (t *Tx) PutControl(seq uint64, body []byte) error {
	return t.tx.Bucket(bucketControl).Put(binary.BigEndian.AppendUint64(nil, seq), body)
}

// ControlBefore is the control entry in force for the stream's message at
// seq: the last one kept before it (first false), else the first one kept
// after it (first true: seq comes before every control entry). seq is 0
// and body nil when none is kept. body is valid only in the transaction.
func (t *Tx) ControlBefore(seq uint64) (at uint64, body []byte, first bool) {
	c := t.tx.Bucket(bucketControl).Cursor()
	k, _ := c.Seek(binary.BigEndian.AppendUint64(nil, seq))
	if k == nil {
		k, body = c.Last()
	} else {
		k, body = c.Prev()
	}
	if k == nil {
		if k, body = c.First(); k == nil {
			return 0, nil, false
		}
		first = true
	}
	return binary.BigEndian.Uint64(k), body, first
}

// metaUint is the meta value under key, written by putMetaUint; 0 when
// there is none.
func (t *Tx) metaUint(key []byte) uint64 {
	raw := t.tx.Bucket(bucketMeta).Get(key)
	if len(raw) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(raw)
}

// putMetaUint keeps v under key, big-endian in 8 bytes.
func (t *Tx) putMetaUint(key []byte, v uint64) error {
	return t.tx.Bucket(bucketMeta).Put(key, binary.BigEndian.AppendUint64(nil, v))
}

// OutcomeCount is how many outcome records the store holds.
func (s *Store) OutcomeCount() (uint64, error) {
	var n uint64
	err := s.View(func(t *Tx) error { n = t.metaUint(keyOutcomeCount); return nil })
	return n, err
}

// AppliedSeq is the highest stream sequence whose command the store has
// processed.
func (t *Tx) AppliedSeq() uint64 { return t.metaUint(keyAppliedSeq) }

// Stream names the stream whose commands the store has applied (its
// creation time): "" for a store that never said.
func (t *Tx) Stream() string { return string(t.tx.Bucket(bucketMeta).Get(keyStream)) }

// SetStream records the stream whose commands the store applies.
func (t *Tx) SetStream(id string) error { return t.tx.Bucket(bucketMeta).Put(keyStream, []byte(id)) }

// NoteAppliedSeq raises AppliedSeq to seq; a lower seq leaves it as it is.
func (t *Tx) NoteAppliedSeq(seq uint64) error {
	if seq <= t.AppliedSeq() {
		return nil
	}
	return t.putMetaUint(keyAppliedSeq, seq)
}

// NoteApplied raises AppliedSeq to seq, the stream sequence of a command
// stamped at (its stream timestamp), and keeps that timestamp: a stream
// restored or created again holds another command under seq, which tells
// it apart from the one this store applied.
func (t *Tx) NoteApplied(seq uint64, at time.Time) error {
	if seq <= t.AppliedSeq() {
		return nil
	}
	if err := t.NoteAppliedSeq(seq); err != nil {
		return err
	}
	return t.putMetaUint(keyAppliedAt, uint64(at.UnixNano()))
}

// AppliedAt is the stream timestamp of the command at AppliedSeq; zero when
// the store did not keep it (written before it did, or split from a store
// that did not).
func (t *Tx) AppliedAt() time.Time {
	raw := t.tx.Bucket(bucketMeta).Get(keyAppliedAt)
	if len(raw) != 8 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(raw)))
}

// Refused is why the store was found not to belong to the stream it is
// used with, "" when it never was: a refusal that stands until an operator
// removes the store.
func (t *Tx) Refused() string { return string(t.tx.Bucket(bucketMeta).Get(keyRefused)) }

// SetRefused records why the store does not belong to its stream.
func (t *Tx) SetRefused(why string) error {
	return t.tx.Bucket(bucketMeta).Put(keyRefused, []byte(why))
}

// PutEvent keeps the event doc of user userID's change to sequence seq in
// the outbox, to be published after the commit.
func (t *Tx) PutEvent(userID string, seq uint64, doc []byte) error {
	if userID == "" || strings.IndexByte(userID, 0) >= 0 {
		return fmt.Errorf("storage: user id %q: %w", userID, ErrBadUserID)
	}
	return t.tx.Bucket(bucketOutbox).Put(eventKey(userID, seq), doc)
}

func eventKey(userID string, seq uint64) []byte {
	k := append(append(make([]byte, 0, len(userID)+9), userID...), 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

// PendingEvent is an event in the outbox.
type PendingEvent struct {
	Key    []byte // for DeleteEventsLater
	UserID string
	Seq    uint64
	Doc    []byte
}

// PendingEvents returns up to max events of the outbox, each user's in the
// order of its changes.
func (s *Store) PendingEvents(max int) ([]PendingEvent, error) {
	var evs []PendingEvent
	// One lock for the walk, not one per key (no write waits on it while
	// holding the store).
	s.deleteMu.Lock()
	defer s.deleteMu.Unlock()
	err := s.View(func(t *Tx) error {
		c := t.tx.Bucket(bucketOutbox).Cursor()
		for k, v := c.First(); k != nil && len(evs) < max; k, v = c.Next() {
			sep := bytes.IndexByte(k, 0)
			if sep < 0 || len(k) != sep+9 {
				return fmt.Errorf("storage: outbox key %x: %w", k, ErrCorrupt)
			}
			if _, queued := s.deletes[string(k)]; queued {
				continue // published: it goes with the next write
			}
			evs = append(evs, PendingEvent{Key: bytes.Clone(k), UserID: string(k[:sep]),
				Seq: binary.BigEndian.Uint64(k[sep+1:]), Doc: bytes.Clone(v)})
		}
		return nil
	})
	return evs, err
}

// DeleteEventsLater queues published events to be deleted from the outbox
// with the next write transaction; PendingEvents no longer returns them.
// Lost in a crash, they are published again, under their ids, which the
// events stream drops as duplicates.
func (s *Store) DeleteEventsLater(keys [][]byte) {
	if len(keys) == 0 {
		return
	}
	s.deleteMu.Lock()
	defer s.deleteMu.Unlock()
	if s.deletes == nil {
		s.deletes = map[string]struct{}{}
	}
	for _, k := range keys {
		s.deletes[string(k)] = struct{}{}
	}
}

// FlushDeletes deletes what DeleteEventsLater queued, when no other write
// has: a transaction of its own, only if there is anything.
func (s *Store) FlushDeletes() error {
	s.deleteMu.Lock()
	n := len(s.deletes)
	s.deleteMu.Unlock()
	if n == 0 {
		return nil
	}
	return s.Update(func(*Tx) error { return nil })
}

// OutboxLen is how many events wait to be published.
func (s *Store) OutboxLen() (int, error) {
	n := 0
	err := s.View(func(t *Tx) error { n = t.tx.Bucket(bucketOutbox).Stats().KeyN; return nil })
	s.deleteMu.Lock()
	n = max(0, n-len(s.deletes)) // published, going with the next write
	s.deleteMu.Unlock()
	return n, err
}

// pruneScan bounds the keys one read transaction of PruneOutcomes looks at.
var pruneScan = 20_000

// PruneOutcomes deletes every outcome record that expired at or before now,
// and reports how many it deleted. It walks the records in read
// transactions of a bounded number of keys, and deletes what it found in
// write transactions of at most limit records, so the consumer is never
// held up for long. A record rewritten with a later expiry in the meantime
// is kept.
//
// Walking the records reads the whole file: at 1,000,000 users and
// 1,100,000 outcomes, 0.16 s when nothing is due and 4.5 s to delete them
// all (this project's 2-core machine). Callers run it rarely (hourly),
// which an outcome retention of days does not notice. It saves an expiry
// index that every command would otherwise write, on pages of its own.
func (s *Store) PruneOutcomes(now time.Time, limit int) (int, error) {
	if limit <= 0 {
		limit = 1
	}
	total := 0
	for _, name := range [][]byte{bucketUsers, bucketOutcomes} {
		var from []byte
		for {
			expired, next, err := s.findExpired(name, from, now, limit)
			if err != nil {
				return total, err
			}
			n, err := s.deleteExpired(name, expired, now)
			total += n
			if err != nil {
				return total, err
			}
			if next == nil {
				break
			}
			from = next
		}
	}
	return total, nil
}

// findExpired returns up to limit keys of expired outcome records in bucket
// name, from key from on, and the key to go on from (nil at the end).
func (s *Store) findExpired(name, from []byte, now time.Time, limit int) (expired [][]byte, next []byte, err error) {
	err = s.View(func(t *Tx) error {
		c := t.tx.Bucket(name).Cursor()
		k, v := c.First()
		if from != nil {
			k, v = c.Seek(from)
		}
		for scanned := 0; k != nil; k, v = c.Next() {
			if scanned == pruneScan || len(expired) == limit {
				next = append([]byte(nil), k...)
				return nil
			}
			scanned++
			if isOutcomeKey(name, k) && outcomeExpired(v, now) {
				expired = append(expired, append([]byte(nil), k...))
			}
		}
		return nil
	})
	return expired, next, err
}

// deleteExpired deletes the records under keys that are still expired.
func (s *Store) deleteExpired(name []byte, keys [][]byte, now time.Time) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	n := 0
	err := s.Update(func(t *Tx) error {
		n = 0
		b := t.tx.Bucket(name)
		for _, k := range keys {
			if !outcomeExpired(b.Get(k), now) {
				continue // repeated since, and kept longer
			}
			if err := b.Delete(k); err != nil {
				return err
			}
			n++
		}
		return t.addOutcomeCount(-int64(n))
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// isOutcomeKey tells an outcome record's key from a user's in bucket name.
func isOutcomeKey(name, k []byte) bool {
	return !bytes.Equal(name, bucketUsers) || bytes.IndexByte(k, 0) >= 0
}

// Backup writes a consistent copy of the store to w, from one read
// transaction, while writers go on, and returns its size and the
// AppliedSeq of the state copied.
func (s *Store) Backup(w io.Writer) (written int64, applied uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		applied = (&Tx{tx: tx}).AppliedSeq()
		written, err = tx.WriteTo(w)
		return err
	})
	return written, applied, err
}

// WriteFileAtomic writes what fill produces to path (mode 0600) through a
// temporary file that is synced and then renamed, so path is either the old
// file or the complete new one, never a partial copy.
func WriteFileAtomic(path string, fill func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := fill(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// The rename is durable only once the directory is synced.
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}
