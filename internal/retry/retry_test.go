package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSchedules(t *testing.T) {
	for _, tt := range []struct {
		p    Policy
		want []time.Duration
	}{
		{Wait, []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond, 8 * time.Second, 8 * time.Second}},
		{Policy{First: 50 * time.Millisecond, Factor: 4, Max: 800 * time.Millisecond}, []time.Duration{50 * time.Millisecond, 200 * time.Millisecond, 800 * time.Millisecond, 800 * time.Millisecond}},
	} {
		for i, want := range tt.want {
			if got := tt.p.After(uint64(i + 1)); got != want {
				t.Errorf("%+v: after failure %d: %s, want %s", tt.p, i+1, got, want)
			}
		}
	}
}

// Do tries again, after the schedule's pauses, until the operation
// succeeds.
func TestDoTries(t *testing.T) {
	var pauses []time.Duration
	calls := 0
	n, err := Do(context.Background(), Policy{First: time.Millisecond, Factor: 2, Max: time.Second},
		func() (int, error) {
			if calls++; calls < 3 {
				return 0, errors.New("store failed")
			}
			return 7, nil
		},
		func(_ error, next time.Duration) { pauses = append(pauses, next) })
	if err != nil || n != 7 || calls != 3 || len(pauses) != 2 || pauses[0] != time.Millisecond || pauses[1] != 2*time.Millisecond {
		t.Fatalf("%d, err %v, %d calls, pauses %v", n, err, calls, pauses)
	}
	calls = 0
	if _, err := Do(context.Background(), Policy{}, func() (int, error) { calls++; return 0, errors.New("x") }, nil); err == nil || calls != 1 {
		t.Fatalf("the zero policy: %d calls, %v; want one try", calls, err)
	}
}

// A context that ends cuts the pause short: a stopping worker does not sit
// out a retry's wait.
func TestDoStopsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Do(ctx, Policy{First: time.Hour, Factor: 1, Max: time.Hour},
			func() (int, error) { return 0, errors.New("store failed") }, func(error, time.Duration) { cancel() })
		done <- err
	}()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want the context's end", err)
	}
}
