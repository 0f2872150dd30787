package storage

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/passkeys/worker/passkey"
)

func MustOpenStore(tb testing.TB) *Store {
	tb.Helper()
	s, err := Open(filepath.Join(tb.TempDir(), "data", "passkeys.db"), Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func TestOpenModesAndLock(t *testing.T) {
	s := MustOpenStore(t)
	info, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != 0o600 {
		t.Errorf("file mode %v, want 0600", got)
	}
	dir, err := os.Stat(filepath.Dir(s.Path()))
	if err != nil {
		t.Fatal(err)
	}
	if got := dir.Mode().Perm(); got != 0o700 {
		t.Errorf("directory mode %v, want 0700", got)
	}
	// bbolt's flock is per open file description, so a second Open in the
	// same process contends like a second process would.
	_, err = Open(s.Path(), Options{Timeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
}

func TestOpenCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passkeys.db")
	if err := os.WriteFile(path, []byte("this is not a bbolt file, not at all, no"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, Options{Timeout: 100 * time.Millisecond})
	if err == nil {
		t.Fatal("opened a corrupt file")
	}
	if want := path; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %s", err, want)
	}
}

// A data file cut short (a bad copy, a full disk during a restore) is
// refused with an error that names it, never a panic.
func TestOpenTruncated(t *testing.T) {
	s := MustOpenStore(t)
	path := s.Path()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{0, 100, 4096, 4096 + 100} {
		cut := filepath.Join(t.TempDir(), "cut.db")
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cut, raw[:size], 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := Open(cut, Options{Timeout: 100 * time.Millisecond})
		if size == 0 {
			// An empty file is a new store, as bbolt treats it.
			if err != nil {
				t.Fatalf("empty file: %v", err)
			}
			st.Close()
			continue
		}
		if err == nil {
			st.Close()
			t.Fatalf("opened a file cut to %d bytes", size)
		}
		if !strings.Contains(err.Error(), cut) {
			t.Errorf("error %q does not name %s", err, cut)
		}
	}
}

func TestUserAndOutcomeRoundTrip(t *testing.T) {
	s := MustOpenStore(t)
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	u := &passkey.User{ID: "u1", ResourceOwner: "o", Sequence: 4, CreationDate: now, ChangeDate: now,
		Passkeys: []passkey.Passkey{{ID: "pk", Name: "n", State: passkey.StateReady}}}
	err := s.Update(func(tx *Tx) error {
		if err := tx.PutUser(u); err != nil {
			return err
		}
		if err := tx.NoteAppliedSeq(9); err != nil {
			return err
		}
		if err := tx.NoteAppliedSeq(3); err != nil {
			return err
		}
		if err := tx.PutOutcome("u1", []byte("k1"), &Outcome{Subject: "s1", Answer: passkey.Refused(passkey.ErrPasskeyLast), Expires: now.Add(time.Hour)}); err != nil {
			return err
		}
		// The same key among another user's records, and for a command
		// that names no user, are other records.
		if err := tx.PutOutcome("u1x", []byte("k1"), &Outcome{Subject: "s2", Expires: now.Add(time.Hour)}); err != nil {
			return err
		}
		return tx.PutOutcome("", []byte("k2"), &Outcome{Subject: "s3", Expires: now.Add(time.Hour)})
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.View(func(tx *Tx) error {
		got, err := tx.User("u1")
		if err != nil || got.Sequence != 4 || len(got.Passkeys) != 1 || !got.ChangeDate.Equal(now) {
			t.Errorf("user = %+v, %v", got, err)
		}
		if missing, err := tx.User("nobody"); missing != nil || err != nil {
			t.Errorf("unknown user = %v, %v", missing, err)
		}
		if got := tx.AppliedSeq(); got != 9 {
			t.Errorf("applied seq = %d, want 9", got)
		}
		for _, c := range []struct {
			user, key, subject string
		}{{"u1", "k1", "s1"}, {"u1x", "k1", "s2"}, {"", "k2", "s3"}, {"u2", "k1", ""}} {
			o, err := tx.Outcome(c.user, []byte(c.key))
			if err != nil {
				t.Errorf("outcome %s/%s: %v", c.user, c.key, err)
				continue
			}
			if got := o != nil; got != (c.subject != "") {
				t.Errorf("outcome %s/%s found = %v", c.user, c.key, got)
			} else if o != nil && o.Subject != c.subject {
				t.Errorf("outcome %s/%s = %+v, want subject %s", c.user, c.key, o, c.subject)
			}
		}
		if o, err := tx.Outcome("u1", []byte("k1")); err != nil || o.Answer.Err == nil || o.Answer.Err.ID != passkey.IDPasskeyLast {
			t.Errorf("outcome = %+v, %v", o, err)
		}
		// A record kept outside the user's records (by an earlier
		// version) is found through the user.
		if o, err := tx.Outcome("u1", []byte("k2")); err != nil || o == nil || o.Subject != "s3" {
			t.Errorf("earlier version's record = %+v, %v", o, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.OutcomeCount(); err != nil || n != 3 {
		t.Errorf("outcome count %d, %v; want 3", n, err)
	}
}

func TestBadUserIDs(t *testing.T) {
	s := MustOpenStore(t)
	for _, id := range []string{"", "u\x00x"} {
		err := s.Update(func(tx *Tx) error { return tx.PutUser(&passkey.User{ID: id}) })
		if !errors.Is(err, ErrBadUserID) {
			t.Errorf("PutUser(%q) = %v, want ErrBadUserID", id, err)
		}
	}
	err := s.Update(func(tx *Tx) error { return tx.PutOutcome("u\x00x", []byte("k"), &Outcome{}) })
	if !errors.Is(err, ErrBadUserID) {
		t.Errorf("PutOutcome = %v, want ErrBadUserID", err)
	}
}

func TestPruneOutcomes(t *testing.T) {
	defer func(n int) { pruneScan = n }(pruneScan)
	pruneScan = 3 // several read transactions over a few keys
	s := MustOpenStore(t)
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	type rec struct{ user, key string }
	err := s.Update(func(tx *Tx) error {
		for _, id := range []string{"u1", "u2"} {
			if err := tx.PutUser(&passkey.User{ID: id}); err != nil {
				return err
			}
		}
		for i, r := range []rec{{"u1", "a"}, {"u1", "b"}, {"u2", "c"}, {"u2", "d"}, {"", "e"}, {"", "f"}} {
			if err := tx.PutOutcome(r.user, []byte(r.key), &Outcome{Subject: "s", Expires: now.Add(time.Duration(i-3) * time.Minute)}); err != nil {
				return err
			}
		}
		// a was repeated later: it now lives longer.
		return tx.PutOutcome("u1", []byte("a"), &Outcome{Subject: "s", Expires: now.Add(time.Hour)})
	})
	if err != nil {
		t.Fatal(err)
	}
	// Due: b, c, d (exactly now). a was extended; e and f are later.
	n, err := s.PruneOutcomes(now, 2)
	if err != nil || n != 2+1 {
		t.Fatalf("prune: %d, %v; want 3", n, err)
	}
	if n, err := s.PruneOutcomes(now, 2); err != nil || n != 0 {
		t.Fatalf("second prune: %d, %v; want 0", n, err)
	}
	if n, err := s.OutcomeCount(); err != nil || n != 3 {
		t.Errorf("outcome count %d, %v; want 3", n, err)
	}
	if n, err := s.PruneOutcomes(now.Add(2*time.Hour), 1); err != nil || n != 3 {
		t.Fatalf("prune of the rest: %d, %v; want 3", n, err)
	}
	err = s.View(func(tx *Tx) error {
		for _, id := range []string{"u1", "u2"} {
			if u, err := tx.User(id); err != nil || u == nil {
				t.Errorf("user %s after pruning: %v, %v", id, u, err)
			}
		}
		for _, r := range []rec{{"u1", "a"}, {"u1", "b"}, {"u2", "c"}, {"u2", "d"}, {"", "e"}, {"", "f"}} {
			if o, err := tx.Outcome(r.user, []byte(r.key)); err != nil || o != nil {
				t.Errorf("outcome %s/%s after pruning all: %v, %v", r.user, r.key, o, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.OutcomeCount(); err != nil || n != 0 {
		t.Errorf("outcome count %d, %v; want 0", n, err)
	}
}

// A store written by a version that indexed outcomes by expiry opens
// without the index; its records are still found and pruned.
func TestOpenDropsTheExpiryIndex(t *testing.T) {
	s := MustOpenStore(t)
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	err := s.db.Update(func(tx *bolt.Tx) error {
		idx, err := tx.CreateBucket(bucketExpiryV1)
		if err != nil {
			return err
		}
		if err := idx.Put([]byte("some index entry"), nil); err != nil {
			return err
		}
		return tx.Bucket(bucketOutcomes).Put([]byte("m:old"), encodeOutcome(&Outcome{Subject: "s", Expires: now}))
	})
	if err != nil {
		t.Fatal(err)
	}
	path := s.Path()
	s.Close()
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.View(func(tx *Tx) error {
		if tx.tx.Bucket(bucketExpiryV1) != nil {
			t.Error("the expiry index is still there")
		}
		if o, err := tx.Outcome("u1", []byte("m:old")); err != nil || o == nil {
			t.Errorf("earlier record = %v, %v", o, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneOutcomes(now, 10); err != nil || n != 1 {
		t.Errorf("prune: %d, %v; want 1", n, err)
	}
}

// A damaged data file is refused with an error that names it and says what
// to do, not a panic.
func TestOpenDamagedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passkeys.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Update(func(tx *Tx) error {
		for i := range 3000 {
			if err := tx.PutUser(&passkey.User{ID: "u" + strconv.Itoa(i), ResourceOwner: "o", Sequence: 1}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xab}, 6*4096), 4*4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s, err = Open(path, Options{})
	if err == nil {
		s.Close()
		t.Fatal("a damaged file opened")
	}
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "backup") {
		t.Fatalf("error %q: want ErrCorrupt, the file's path and what to do", err)
	}
}

// A published event queued by DeleteEventsLater is no longer pending, and
// leaves the outbox with the next write transaction (whatever it writes),
// or with FlushDeletes when there is none.
func TestEventsDeletedWithTheNextWrite(t *testing.T) {
	s := MustOpenStore(t)
	for seq := uint64(1); seq <= 3; seq++ {
		if err := s.Update(func(tx *Tx) error { return tx.PutEvent("u1", seq, []byte(`{}`)) }); err != nil {
			t.Fatal(err)
		}
	}
	pending, err := s.PendingEvents(10)
	if err != nil || len(pending) != 3 {
		t.Fatalf("pending %d (%v), want 3", len(pending), err)
	}
	s.DeleteEventsLater([][]byte{pending[0].Key, pending[1].Key})
	if p, _ := s.PendingEvents(10); len(p) != 1 || p[0].Seq != 3 {
		t.Fatalf("pending after two were published: %+v", p)
	}
	if n, _ := s.OutboxLen(); n != 1 {
		t.Fatalf("outbox length %d, want 1", n)
	}
	// The next write takes them out with it.
	if err := s.Update(func(tx *Tx) error { return tx.NoteAppliedSeq(7) }); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := s.View(func(tx *Tx) error { left = tx.tx.Bucket(bucketOutbox).Stats().KeyN; return nil }); err != nil || left != 1 {
		t.Fatalf("%d events in the outbox after the next write (%v), want 1", left, err)
	}
	// A write that fails keeps them queued.
	s.DeleteEventsLater([][]byte{pending[2].Key})
	if err := s.Update(func(*Tx) error { return errors.New("no") }); err == nil {
		t.Fatal("the failing write went through")
	}
	if err := s.FlushDeletes(); err != nil {
		t.Fatal(err)
	}
	if err := s.View(func(tx *Tx) error { left = tx.tx.Bucket(bucketOutbox).Stats().KeyN; return nil }); err != nil || left != 0 {
		t.Fatalf("%d events in the outbox after the flush (%v), want 0", left, err)
	}
}

// A store opened without fsync is marked unclean from its open until it
// is closed; a store opened with fsync never is; Discard removes both.
func TestUncleanUntilClosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p000.db")
	s, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if !Unclean(path) {
		t.Fatal("open without fsync, not marked")
	}
	if info, err := os.Stat(path + openMarker); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("marker: %v %v", info, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if Unclean(path) {
		t.Fatal("closed, still marked")
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if Unclean(path) {
		t.Fatal("opened with fsync, marked")
	}
	s.Close()
	crashed, err := Open(path, Options{NoSync: true}) // left open: a crash
	if err != nil {
		t.Fatal(err)
	}
	defer crashed.db.Close()
	if err := Discard(path); err != nil || Unclean(path) {
		t.Fatalf("discard: %v, unclean %v", err, Unclean(path))
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the store is still there: %v", err)
	}
}
