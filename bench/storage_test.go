package bench

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/passkeys/worker/storage"
)

// storeUsers is the store size of the storage benchmarks.
const storeUsers = 100_000

var (
	seedOnce sync.Once
	seedPath string
	seedErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if seedPath != "" {
		os.RemoveAll(filepath.Dir(seedPath))
	}
	os.Exit(code)
}

// seededStore opens a copy of a store of storeUsers users, seeded once per
// test binary, so each benchmark starts from the same file.
func seededStore(b *testing.B) *storage.Store {
	b.Helper()
	seedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "passkeys-bench-seed")
		if err != nil {
			seedErr = err
			return
		}
		seedPath = filepath.Join(dir, "seed.db")
		s, err := storage.Open(seedPath, storage.Options{})
		if err != nil {
			seedErr = err
			return
		}
		seedErr = SeedUsers(s, storeUsers)
		if err := s.Close(); seedErr == nil {
			seedErr = err
		}
	})
	if seedErr != nil {
		b.Fatal(seedErr)
	}
	path := filepath.Join(b.TempDir(), "passkeys.db")
	if err := copyFile(seedPath, path); err != nil {
		b.Fatal(err)
	}
	s, err := storage.Open(path, storage.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// BenchmarkRemove measures removals on a store of 100,000 users with three
// passkeys each: one removal per transaction (two fsyncs each) against
// batches sharing one commit. Compare with benchstat.
func BenchmarkRemove(b *testing.B) {
	for _, batch := range []int{1, 100, 1000} {
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			s := seededStore(b)
			maxN := storeUsers * PasskeysPerUser
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(b.N-done, maxN)
				if done > 0 && done%maxN == 0 {
					b.StopTimer()
					s = seededStore(b) // every passkey is gone: start again from a fresh copy
					b.StartTimer()
				}
				if err := RemoveBatched(s, storeUsers, 0, n, batch); err != nil {
					b.Fatal(err)
				}
				done += n
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "removals/s")
		})
	}
}

func TestRemoveBatched(t *testing.T) {
	s, err := storage.Open(filepath.Join(t.TempDir(), "p.db"), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := SeedUsers(s, 10); err != nil {
		t.Fatal(err)
	}
	if err := RemoveBatched(s, 10, 0, 30, 7); err != nil {
		t.Fatal(err)
	}
	err = s.View(func(tx *storage.Tx) error {
		u, err := tx.User(UserID(3))
		if err != nil {
			return err
		}
		if len(u.Passkeys) != 0 || u.Sequence != 1+PasskeysPerUser {
			t.Errorf("user after removals: %d passkeys, sequence %d", len(u.Passkeys), u.Sequence)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.OutcomeCount(); err != nil || n != 30 {
		t.Fatalf("outcomes %d, %v; want 30", n, err)
	}
}
