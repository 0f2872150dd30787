package runner

import (
	"testing"
	"time"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/storage"
)

// A partition's snapshot is written when its state is ahead of the newest
// by the policy's count of commands, or by anything once that snapshot is
// the policy's age; a state no further than its snapshot is not written
// again and counts as fresh.
func TestSnapshotPolicy(t *testing.T) {
	s := &Set{cfg: Config{SnapshotInterval: time.Hour, SnapshotChanges: 100}}
	pt := &part{store: testenv.MustOpenStore(t)}
	apply := func(seq uint64) {
		t.Helper()
		if err := pt.store.Update(func(tx *storage.Tx) error { return tx.NoteAppliedSeq(seq) }); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name        string
		applied     uint64
		snapApplied uint64
		snapAge     time.Duration
		due         bool
	}{
		{"nothing new", 50, 50, 3 * time.Hour, false},
		{"a few commands, a fresh snapshot", 60, 50, time.Minute, false},
		{"the policy's count of commands", 150, 50, time.Minute, true},
		{"a few commands, a snapshot the policy's age", 160, 150, time.Hour, true},
	} {
		apply(tt.applied)
		pt.snapApplied, pt.snapAt = tt.snapApplied, time.Now().Add(-tt.snapAge)
		if got := s.snapshotDue(pt); got != tt.due {
			t.Errorf("%s: due %v, want %v", tt.name, got, tt.due)
		}
	}
	if age := time.Since(pt.snapshotTime()); age < time.Hour {
		t.Fatalf("a snapshot found due keeps its age (%s)", age)
	}
	pt.snapApplied = 160
	s.snapshotDue(pt)
	if age := time.Since(pt.snapshotTime()); age > time.Minute {
		t.Fatalf("a state no further than its snapshot should count as fresh, is %s old", age)
	}
}
