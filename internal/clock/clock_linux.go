package clock

import "golang.org/x/sys/unix"

// raw reads CLOCK_BOOTTIME: monotonic, and counting the time the machine
// was suspended.
func raw() Instant {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic("clock: CLOCK_BOOTTIME: " + err.Error()) // on Linux since 2.6.39
	}
	return Instant(ts.Nano())
}
