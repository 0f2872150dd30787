package storage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
		return tx.PutOutcome([]byte("k1"), &Outcome{Subject: "s", Reply: []byte{7, 8}, Expires: now.Add(time.Hour)})
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
		o, err := tx.Outcome([]byte("k1"))
		if err != nil || string(o.Reply) != "\x07\x08" || o.Subject != "s" {
			t.Errorf("outcome = %+v, %v", o, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPruneOutcomes(t *testing.T) {
	s := MustOpenStore(t)
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	err := s.Update(func(tx *Tx) error {
		for i, key := range []string{"a", "b", "c", "d", "e"} {
			if err := tx.PutOutcome([]byte(key), &Outcome{Subject: "s", Expires: now.Add(time.Duration(i-2) * time.Minute)}); err != nil {
				return err
			}
		}
		// b was repeated later: its record now lives longer than its first index entry.
		return tx.PutOutcome([]byte("b"), &Outcome{Subject: "s", Expires: now.Add(time.Hour)})
	})
	if err != nil {
		t.Fatal(err)
	}
	// Index entries due: a, b (its old entry), c (exactly now). d, e and b's
	// new entry are later.
	n, err := s.PruneOutcomes(now, 2)
	if err != nil || n != 2 {
		t.Fatalf("first prune: %d, %v", n, err)
	}
	n, err = s.PruneOutcomes(now, 2)
	if err != nil || n != 1 {
		t.Fatalf("second prune: %d, %v", n, err)
	}
	if n, err := s.OutcomeCount(); err != nil || n != 3 {
		t.Errorf("outcome count %d, %v; want 3", n, err)
	}
	err = s.View(func(tx *Tx) error {
		for key, want := range map[string]bool{"a": false, "b": true, "c": false, "d": true, "e": true} {
			o, err := tx.Outcome([]byte(key))
			if err != nil {
				return err
			}
			if got := o != nil; got != want {
				t.Errorf("outcome %s kept = %v, want %v", key, got, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
