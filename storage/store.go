// Package storage keeps users and command outcomes in a bbolt file. The
// store owns its transactions: a caller runs its whole decision inside one
// Update, so the check, the change, the sequence and the outcome record
// commit together or not at all.
package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/passkeys/worker/passkey"
)

// Bucket names. Every bucket is created when the store is opened, so a
// transaction never has to.
var (
	// bucketUsers maps a user id to its encoded passkey.User (codec.go).
	bucketUsers = []byte("users")
	// bucketOutcomes maps an outcome key to its encoded Outcome (codec.go).
	bucketOutcomes = []byte("outcomes")
	// bucketExpiry indexes outcomes by expiry: 8-byte big-endian Unix
	// nanoseconds followed by the outcome key, with an empty value.
	bucketExpiry = []byte("outcome_expiry")
	// bucketMeta holds single values such as the last applied stream sequence.
	bucketMeta = []byte("meta")
)

var (
	keyAppliedSeq   = []byte("applied_stream_seq")
	keyOutcomeCount = []byte("outcome_count")
)

// DefaultTimeout is how long Open waits for another process's lock on the file.
const DefaultTimeout = 2 * time.Second

// Options tune Open.
type Options struct {
	// Timeout bounds the wait for the file lock; zero means DefaultTimeout.
	Timeout time.Duration
	// NoSync skips fsync on commit. Only for benchmarks of the layers above:
	// a crash may lose committed work.
	NoSync bool
}

// ErrLocked is returned by Open when another process holds the file.
var ErrLocked = errors.New("storage: the data file is locked by another process")

// Store is an open bbolt file.
type Store struct {
	db   *bolt.DB
	path string
}

// Open opens or creates the store at path, creating its directory (0700),
// the file (0600) and every bucket.
func Open(path string, opts Options) (*Store, error) {
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
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s (waited %s)", ErrLocked, path, opts.Timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("storage: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketUsers, bucketOutcomes, bucketExpiry, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("storage: initialise %s: %w", path, err)
	}
	return &Store{db: db, path: path}, nil
}

// Path is the file the store lives in.
func (s *Store) Path() string { return s.path }

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Update runs fn in one read-write transaction, committed (and synced) when
// fn returns nil and rolled back otherwise.
func (s *Store) Update(fn func(*Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
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
	return t.tx.Bucket(bucketUsers).Put([]byte(u.ID), encodeUser(u))
}

// Outcome is the reply a command got, kept so that a repeat of the command
// gets the same bytes.
type Outcome struct {
	// Subject is the command's subject: a key reused for another command
	// must not be answered with this outcome.
	Subject string
	// Reply is the reply in the compact form its sender chose (the
	// handler's reply record), from which it rebuilds the same bytes.
	Reply []byte
	// Expires is when the record may be pruned.
	Expires time.Time
}

// Outcome returns the outcome kept under key, or nil.
func (t *Tx) Outcome(key []byte) (*Outcome, error) {
	raw := t.tx.Bucket(bucketOutcomes).Get(key)
	if raw == nil {
		return nil, nil
	}
	o, err := decodeOutcome(raw)
	if err != nil {
		return nil, fmt.Errorf("storage: outcome record: %w", err)
	}
	return o, nil
}

// PutOutcome keeps o under key until o.Expires.
func (t *Tx) PutOutcome(key []byte, o *Outcome) error {
	outcomes := t.tx.Bucket(bucketOutcomes)
	if outcomes.Get(key) == nil {
		if err := t.addOutcomeCount(1); err != nil {
			return err
		}
	}
	if err := outcomes.Put(key, encodeOutcome(o)); err != nil {
		return err
	}
	expiry := t.tx.Bucket(bucketExpiry)
	// Expiry keys mostly grow with time: fill pages completely instead of
	// splitting them half empty.
	expiry.FillPercent = 0.95
	return expiry.Put(expiryKey(o.Expires, key), nil)
}

// addOutcomeCount keeps the number of outcome records, so that metrics can
// report it without walking the bucket.
func (t *Tx) addOutcomeCount(delta int64) error {
	n := int64(t.outcomeCount()) + delta
	if n < 0 {
		n = 0
	}
	return t.tx.Bucket(bucketMeta).Put(keyOutcomeCount, binary.BigEndian.AppendUint64(nil, uint64(n)))
}

func (t *Tx) outcomeCount() uint64 {
	raw := t.tx.Bucket(bucketMeta).Get(keyOutcomeCount)
	if len(raw) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(raw)
}

// OutcomeCount is how many outcome records the store holds.
func (s *Store) OutcomeCount() (uint64, error) {
	var n uint64
	err := s.View(func(t *Tx) error { n = t.outcomeCount(); return nil })
	return n, err
}

// AppliedSeq is the highest stream sequence whose command the store has
// processed.
func (t *Tx) AppliedSeq() uint64 {
	raw := t.tx.Bucket(bucketMeta).Get(keyAppliedSeq)
	if len(raw) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(raw)
}

// NoteAppliedSeq raises AppliedSeq to seq; a lower seq leaves it as it is.
func (t *Tx) NoteAppliedSeq(seq uint64) error {
	if seq <= t.AppliedSeq() {
		return nil
	}
	return t.tx.Bucket(bucketMeta).Put(keyAppliedSeq, binary.BigEndian.AppendUint64(nil, seq))
}

func expiryKey(at time.Time, key []byte) []byte {
	k := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(key)), uint64(at.UnixNano()))
	return append(k, key...)
}

// PruneOutcomes deletes at most limit outcome records that expired before
// now, in one transaction, and reports how many it deleted. Callers loop
// until it returns fewer than limit, so no one transaction grows large.
func (s *Store) PruneOutcomes(now time.Time, limit int) (int, error) {
	n := 0
	err := s.Update(func(t *Tx) error {
		outcomes, expiry := t.tx.Bucket(bucketOutcomes), t.tx.Bucket(bucketExpiry)
		c := expiry.Cursor()
		cutoff := uint64(now.UnixNano())
		for k, _ := c.First(); k != nil && n < limit; k, _ = c.First() {
			if len(k) < 8 || binary.BigEndian.Uint64(k[:8]) > cutoff {
				break
			}
			key := append([]byte(nil), k[8:]...)
			// The record may have been rewritten with a later expiry; only
			// delete it if this index entry is the one it holds.
			if o, err := t.Outcome(key); err != nil {
				return err
			} else if o != nil && !o.Expires.After(now) {
				if err := outcomes.Delete(key); err != nil {
					return err
				}
				if err := t.addOutcomeCount(-1); err != nil {
					return err
				}
			}
			if err := c.Delete(); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// Backup writes a consistent copy of the store to w, from one read
// transaction, while writers go on. announce, when set, is told the size
// before the first byte is written.
func (s *Store) Backup(w io.Writer, announce func(size int64)) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		if announce != nil {
			announce(tx.Size())
		}
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
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
	return os.Rename(tmp.Name(), path)
}
