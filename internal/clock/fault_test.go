package clock

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A clock fault moves the wall clock by its offset and runs both clocks at
// its rate; once it is over the wall clock is right again and the
// monotonic clock keeps what it counted, never going back.
func TestFaultJumpsAndRuns(t *testing.T) {
	t.Cleanup(resetFault)
	Set(3*time.Hour, 1)
	if d := time.Until(Wall()); d < 3*time.Hour-time.Second || d > 3*time.Hour+time.Second {
		t.Fatalf("wall clock off by %v, want 3h", d)
	}
	Set(-time.Hour, 1)
	if d := time.Until(Wall()); d > -time.Hour+time.Second || d < -time.Hour-time.Second {
		t.Fatalf("wall clock off by %v, want -1h", d)
	}

	Set(0, 10)
	m0, r0 := Now(), raw()
	for raw()-r0 < Instant(20*time.Millisecond) {
	}
	counted, real := Since(m0), time.Duration(raw()-r0)
	if counted < 8*real || counted > 12*real {
		t.Fatalf("at rate 10 the clock counted %v while %v passed", counted, real)
	}
	before := Now()
	Set(0, 1)
	if after := Now(); after.Before(before) {
		t.Fatalf("monotonic clock went back from %v to %v when the fault ended", before, after)
	}
	if d := time.Until(Wall()); d < -time.Second || d > time.Second {
		t.Fatalf("wall clock off by %v after the fault, want 0", d)
	}
}

// Readers never see the monotonic clock go back while faults of other
// rates are set under them.
func TestFaultNeverGoesBack(t *testing.T) {
	t.Cleanup(resetFault)
	Set(0, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	backs := make([]time.Duration, 4)
	for i := range backs {
		wg.Go(func() {
			last := Now()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if now := Now(); now < last {
					backs[i] = max(backs[i], time.Duration(last-now))
				} else {
					last = now
				}
			}
		})
	}
	for i := range 2000 {
		Set(0, []float64{1, 10, 1000}[i%3])
	}
	close(stop)
	wg.Wait()
	for i, b := range backs {
		if b > 0 {
			t.Errorf("reader %d saw the clock go back by %v", i, b)
		}
	}
}

func TestParseFault(t *testing.T) {
	for _, tc := range []struct {
		in     string
		offset time.Duration
		rate   float64
		ok     bool
	}{
		{"", 0, 1, true},
		{"offset=90m", 90 * time.Minute, 1, true},
		{"offset=-2h rate=4", -2 * time.Hour, 4, true},
		{"rate=0", 0, 1, false},
		{"rate=0.5", 0, 1, false},
		{"rate=x", 0, 1, false},
		{"skew=1s", 0, 1, false},
		{"offset=1", 0, 1, false},
	} {
		offset, rate, err := ParseFault(tc.in)
		if (err == nil) != tc.ok || offset != tc.offset || rate != tc.rate {
			t.Errorf("ParseFault(%q) = %v, %v, %v; want %v, %v, ok %v", tc.in, offset, rate, err, tc.offset, tc.rate, tc.ok)
		}
	}
}

// Follow takes the file's fault, reports a bad file without acting on it,
// and ends the fault when the file goes.
func TestFollowTheFile(t *testing.T) {
	t.Cleanup(resetFault)
	path := filepath.Join(t.TempDir(), "clock")
	type change struct {
		offset time.Duration
		err    bool
	}
	changes := make(chan change, 16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Follow(ctx, path, time.Millisecond, func(o time.Duration, _ float64, err error) { changes <- change{o, err != nil} })
	want := func(c change) {
		t.Helper()
		if got := <-changes; got != c {
			t.Fatalf("change %+v, want %+v", got, c)
		}
	}
	want(change{0, false})
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path+".tmp", []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	write("offset=1h")
	want(change{time.Hour, false})
	write("offset=nonsense")
	want(change{0, true})
	if d := time.Until(Wall()); d < time.Hour-time.Second {
		t.Fatalf("a bad file changed the clock: off by %v", d)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	want(change{0, false})
	if d := time.Until(Wall()); d > time.Second {
		t.Fatalf("clock still off by %v once the file went", d)
	}
}

// resetFault takes the fault away as if there had been none (Set(0, 1)
// keeps what the rates counted).
func resetFault() {
	current.Store(nil)
	latest.Store(0)
}
