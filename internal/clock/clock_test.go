package clock

import (
	"testing"
	"time"
)

// The clock moves on as Go's monotonic clock does while the machine runs.
func TestClockMovesWithTime(t *testing.T) {
	a, start := Now(), time.Now()
	for time.Since(start) < 20*time.Millisecond {
	}
	b, took := Now(), time.Since(start)
	if d := Since(a); d < took-time.Millisecond || b.Before(a) || !a.Before(a.Add(time.Nanosecond)) {
		t.Fatalf("the clock counted %s where Go's counted %s", d, took)
	}
}
