// Package progress shows how a batch goes: a bar on a terminal, a plain
// line every two seconds otherwise, or nothing.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Progress shows how a batch goes: a bar on a terminal, plain lines
// otherwise.
type Progress interface {
	Add(n int)
	Finish()
}

// None shows nothing (the bench, and --progress none).
type None struct{}

func (None) Add(int) {}
func (None) Finish() {}

type barProgress struct{ bar *progressbar.ProgressBar }

func (b barProgress) Add(n int) { _ = b.bar.Add(n) }
func (b barProgress) Finish()   { _ = b.bar.Finish() }

// lineProgress prints a plain progress line every interval.
type lineProgress struct {
	mu       sync.Mutex
	w        io.Writer
	total    int
	done     int
	start    time.Time
	last     time.Time
	interval time.Duration
	unit     string
}

func (l *lineProgress) Add(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.done += n
	if now := time.Now(); now.Sub(l.last) >= l.interval {
		l.last = now
		l.print(now)
	}
}

func (l *lineProgress) print(now time.Time) {
	rate := float64(l.done) / max(now.Sub(l.start).Seconds(), 1e-3)
	eta := "?"
	if rate > 0 {
		eta = (time.Duration(float64(l.total-l.done)/rate) * time.Second).Round(time.Second).String()
	}
	fmt.Fprintf(l.w, "progress: %d/%d %s (%.0f%%), %.0f/s, eta %s\n", l.done, l.total, l.unit,
		100*float64(l.done)/float64(max(l.total, 1)), rate, eta)
}

func (l *lineProgress) Finish() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.print(time.Now())
}

// New is the progress of a batch of total units shown on w: mode bar, lines,
// none, or auto (a bar on a terminal, lines otherwise).
func New(w io.Writer, mode string, total int, unit string) Progress {
	if mode == "auto" {
		mode = "lines"
		if f, ok := w.(*os.File); ok {
			if info, err := f.Stat(); err == nil && info.Mode()&os.ModeCharDevice != 0 {
				mode = "bar"
			}
		}
	}
	switch mode {
	case "bar":
		return barProgress{progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(unit),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString(unit),
			progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(100*time.Millisecond))}
	case "none":
		return None{}
	default:
		now := time.Now()
		return &lineProgress{w: w, total: total, start: now, last: now, interval: 2 * time.Second, unit: unit}
	}
}
