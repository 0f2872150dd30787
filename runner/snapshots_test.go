package runner

import (
	"strings"
	"testing"
	"time"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/storage"
)

// A partition's snapshot is written when its state is ahead of the newest
// by the policy's count of commands, or by anything once that snapshot is
// the policy's age; a state no further than its snapshot is not written
// again and counts as fresh, though the bucket is looked at again once in
// the policy's age (its newest may be gone behind the worker's back).
func TestSnapshotPolicy(t *testing.T) {
	s := &Set{cfg: Config{Options: Options{SnapshotInterval: time.Hour, SnapshotChanges: 100}}}
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
		{"nothing new, but the bucket not looked at for the policy's age", 50, 50, 3 * time.Hour, true},
		{"a few commands, a fresh snapshot", 60, 50, time.Minute, false},
		{"the policy's count of commands", 150, 50, time.Minute, true},
		{"a few commands, a snapshot the policy's age", 160, 150, time.Hour, true},
	} {
		apply(tt.applied)
		pt.snapApplied, pt.snapAt, pt.checkedAt = tt.snapApplied, time.Now().Add(-tt.snapAge), time.Now()
		if strings.Contains(tt.name, "not looked at") {
			pt.checkedAt = time.Now().Add(-2 * time.Hour)
		}
		if got := s.snapshotDue(pt); got != tt.due {
			t.Errorf("%s: due %v, want %v", tt.name, got, tt.due)
		}
	}
	if age := time.Since(pt.snapshotTime()); age < time.Hour {
		t.Fatalf("a snapshot found due keeps its age (%s)", age)
	}
	pt.snapApplied, pt.checkedAt = 160, time.Now()
	s.snapshotDue(pt)
	if age := time.Since(pt.snapshotTime()); age > time.Minute {
		t.Fatalf("a state no further than its snapshot should count as fresh, is %s old", age)
	}
}
