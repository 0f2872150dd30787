package clock

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A clock fault, for the fault campaign only (worker --fault-clock): this
// process's wall clock is off by an offset and both its clocks run at a
// rate of 1 or more, as a machine's clock that jumps or runs fast would.
// The monotonic clock never jumps and never goes back: it only takes the
// rate, and what a fast rate counted stays counted once the fault is over.
type fault struct {
	offset time.Duration // the wall clock's jump
	rate   float64       // how fast both clocks run (1: as they should)
	since  Instant       // raw reading when the fault began
	before time.Duration // what earlier faults' rates added to the monotonic clock
}

var (
	current atomic.Pointer[fault]
	setMu   sync.Mutex
	latest  atomic.Int64 // the latest reading Now gave under a fault
)

// drift is what f's rate has added since it began, at raw reading now.
func (f *fault) drift(now Instant) time.Duration {
	return time.Duration(float64(now-f.since) * (f.rate - 1))
}

// Now reads the monotonic clock: CLOCK_BOOTTIME on Linux, so it counts
// the time the machine was suspended. Under a fault it never reads less
// than it read before: a reading taken across a Set could otherwise go
// back by what the old and the new rate differ over that moment.
func Now() Instant {
	f := current.Load()
	now := raw()
	if f == nil {
		return now
	}
	v := now + Instant(f.before+f.drift(max(now, f.since)))
	for {
		last := Instant(latest.Load())
		if v <= last {
			return last
		}
		if latest.CompareAndSwap(int64(last), int64(v)) {
			return v
		}
	}
}

// Wall is the wall clock's reading, with no monotonic part: the time that
// is compared with other machines' times (a stored outcome's expiry, a
// server's timestamp).
func Wall() time.Time {
	t := time.Now().Round(0)
	if f := current.Load(); f != nil {
		return t.Add(f.offset + f.drift(raw()))
	}
	return t
}

// Set puts the clocks off by offset (the wall clock only) and running at
// rate from now on; Set(0, 1) makes them right again.
func Set(offset time.Duration, rate float64) {
	setMu.Lock()
	defer setMu.Unlock()
	now := raw()
	f := &fault{offset: offset, rate: rate, since: now}
	if old := current.Load(); old != nil {
		f.before = old.before + old.drift(now)
	}
	current.Store(f)
}

// ParseFault reads a clock fault as its file spells it: "offset=<Go
// duration> rate=<number>", either part left out for none ("" is no
// fault).
func ParseFault(s string) (offset time.Duration, rate float64, err error) {
	rate = 1
	for _, field := range strings.Fields(s) {
		k, v, _ := strings.Cut(field, "=")
		switch k {
		case "offset":
			offset, err = time.ParseDuration(v)
		case "rate":
			rate, err = strconv.ParseFloat(v, 64)
			if err == nil && (rate < 1 || rate > 1000) {
				// A clock that runs slow would hold a lease past the
				// server's TTL: a fault the worker does not claim to
				// survive (a pause is the campaign's freeze).
				err = fmt.Errorf("rate %v is not in [1, 1000]", rate)
			}
		default:
			err = fmt.Errorf("%q is neither offset= nor rate=", field)
		}
		if err != nil {
			return 0, 1, fmt.Errorf("clock fault %q: %w", s, err)
		}
	}
	return offset, rate, nil
}

// Follow sets the clocks as the file at path says, read every interval
// until ctx ends (a missing file: no fault); changed tells of each change,
// and of each new error (a file it cannot read or parse changes nothing).
// For the fault campaign only.
func Follow(ctx context.Context, path string, interval time.Duration, changed func(offset time.Duration, rate float64, err error)) {
	last, lastErr := "\x00", "" // the first reading is reported, a fault or none
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			b, err = nil, nil
		}
		s := strings.TrimSpace(string(b))
		offset, rate := time.Duration(0), 1.0
		if err == nil {
			offset, rate, err = ParseFault(s)
		}
		switch {
		case err != nil && err.Error() != lastErr:
			lastErr = err.Error()
			changed(0, 1, err)
		case err == nil && s != last:
			last, lastErr = s, ""
			Set(offset, rate)
			changed(offset, rate, nil)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
