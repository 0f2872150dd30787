// Package clock is the worker's clock for what must count every moment
// that passed, a suspended machine's sleep included: how long a lease is
// still held, how old a reading of another server's clock is. Go's own
// monotonic clock (CLOCK_MONOTONIC on Linux) stops while the machine is
// suspended, so after a suspend it would count a lease as held for as long
// as the machine slept, though its holder's renewals stopped and another
// worker holds it already.
package clock

import "time"

// Instant is a reading of the clock: the time since an arbitrary start.
type Instant time.Duration

// Since is the time from i to now.
func Since(i Instant) time.Duration { return time.Duration(Now() - i) }

// Add is i plus d.
func (i Instant) Add(d time.Duration) Instant { return i + Instant(d) }

// Before tells whether i is earlier than j.
func (i Instant) Before(j Instant) bool { return i < j }
