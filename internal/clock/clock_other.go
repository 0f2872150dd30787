//go:build !linux

package clock

import "time"

var start = time.Now()

// raw reads Go's monotonic clock, which on other systems may not count a
// suspended machine's sleep.
func raw() Instant { return Instant(time.Since(start)) }
