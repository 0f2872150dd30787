package keyhistory

import (
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/clock"
)

// The barrier follows each reading of the leader's clock, also back in
// time (a new leader whose clock is behind), but never runs ahead of what
// this worker counted since the last reading (a leader whose clock is
// ahead would make it believe it had read entries a correct clock stamps
// later).
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
		{"a leader 30 s ahead", 10 * time.Second, time.Minute, 30*time.Second + 2*MaxClockSkew},
		{"back to a correct leader", time.Second, 32 * time.Second, 32 * time.Second},
		{"a leader 10 s behind", time.Second, 23 * time.Second, 23 * time.Second},
	} {
		at = at.Add(tt.elapsed)
		got := h.barrier(base.Add(tt.reading), at)
		h.known, h.knownAt = got, at
		if want := base.Add(tt.want); !got.Equal(want) {
			t.Errorf("%s: barrier %s, want %s", tt.name, got.Sub(base), tt.want)
		}
	}
}
