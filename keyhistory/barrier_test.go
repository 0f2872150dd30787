package keyhistory

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/clock"
)

// The barrier follows each reading of the leader's clock, also back in
// time (a new leader whose clock is behind), but never runs ahead of the
// slowest clock read in the last anchorWindow, by what this worker counted
// since, and of this machine's clock, by more than MaxClockSkew: not once,
// and not by a run of readings of a fast leader.
func TestBarrierFollowsReadingsButNeverRunsAhead(t *testing.T) {
	base := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	at := clock.Instant(0)
	h := &History{log: zerolog.Nop()}
	for _, tt := range []struct {
		name    string
		elapsed time.Duration // counted by this worker since the last reading
		reading time.Duration // the leader's clock, after base
		want    time.Duration
	}{
		{"first", 0, 0, 0},
		{"on time", 10 * time.Second, 10 * time.Second, 10 * time.Second},
		{"ahead, within the skew", 10 * time.Second, 20*time.Second + MaxClockSkew, 20*time.Second + MaxClockSkew},
		{"a leader 30 s ahead", 10 * time.Second, time.Minute, 30*time.Second + MaxClockSkew},
		{"still 30 s ahead, a second later", time.Second, 61 * time.Second, 31*time.Second + MaxClockSkew},
		{"and again", time.Second, 62 * time.Second, 32*time.Second + MaxClockSkew},
		{"back to a correct leader", time.Second, 33 * time.Second, 33 * time.Second},
		{"a leader 10 s behind", time.Second, 24 * time.Second, 24 * time.Second},
		{"ahead of that one and of this machine", time.Second, 45 * time.Second, 35*time.Second + MaxClockSkew},
		{"ahead of it, but in step with this machine", time.Second, 36 * time.Second, 36 * time.Second},
		{"on time after it", time.Second, 37 * time.Second, 37 * time.Second},
		{"a fast leader, once the slow readings are past the window", 6 * time.Minute, 457 * time.Second, 457 * time.Second},
	} {
		at = at.Add(tt.elapsed)
		// This machine's clock is correct: the leader's readings are
		// "on time" when they match at.
		wall := base.Add(time.Duration(at))
		got := h.barrierAt(base.Add(tt.reading), at, wall)
		h.known, h.knownAt = got, at
		if want := base.Add(tt.want); !got.Equal(want) {
			t.Errorf("%s: barrier %s, want %s", tt.name, got.Sub(base), tt.want)
		}
	}
}

// The time the endpoints judge requests at does not go back by up to
// MaxClockSkew (the key bucket's leader changed to a server whose clock is
// a little behind: a key retired at the later time stays retired); a clock
// that was far ahead is followed back, not held on to.
func TestNowNeverGoesBack(t *testing.T) {
	base := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	h := &History{log: zerolog.Nop()}
	now := func(known time.Time) time.Time {
		t.Helper()
		h.known, h.knownAt = known, clock.Now()
		got, err := h.Now(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	first := now(base.Add(10 * time.Second))
	if second := now(base.Add(10*time.Second - MaxClockSkew/2)); second.Before(first) {
		t.Fatalf("Now went back from %s to %s", first.Sub(base), second.Sub(base))
	}
	if third := now(base.Add(-time.Hour)); !third.Before(first.Add(-time.Minute)) {
		t.Fatalf("Now held on to %s after the clock went back an hour", third.Sub(base))
	}
}
