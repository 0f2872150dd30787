// Package retry is the worker's one way of trying again: a schedule of
// pauses that grow by a factor up to a cap, and Do, which retries an
// operation on that schedule (github.com/cenkalti/backoff/v5 underneath)
// and stops waiting as soon as its context ends, so a shutdown never sits
// out a pause.
package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Policy is a schedule: the pause after the first failure is First, each
// next one Factor times the one before, never more than Max. Do tries until
// the context ends or MaxElapsed. The zero Policy tries once.
type Policy struct {
	First, Max time.Duration
	Factor     float64
	// MaxElapsed, when set, ends Do once the next pause would pass it.
	MaxElapsed time.Duration
}

// Wait is how a partition waits on a command it could not apply (a fault
// of the machine): tried again, and again, never given up on or passed.
var Wait = Policy{First: 200 * time.Millisecond, Factor: 2, Max: 8 * time.Second}

// After is the pause after the n-th failure (n from 1).
func (p Policy) After(n uint64) time.Duration {
	d := float64(p.First)
	for i := uint64(1); i < n && time.Duration(d) < p.Max; i++ {
		d *= p.Factor
	}
	return min(time.Duration(d), p.Max)
}

// Do runs op until it succeeds, or the policy's time runs out, or ctx
// ends, and returns its last result and error (ctx's cause when the
// context ended a pause). notify, when set, hears of each failure that
// will be tried again and of the pause before the next try.
func Do[T any](ctx context.Context, p Policy, op func() (T, error), notify func(err error, next time.Duration)) (T, error) {
	if p.First <= 0 {
		return op()
	}
	b := &backoff.ExponentialBackOff{InitialInterval: p.First, Multiplier: p.Factor, MaxInterval: p.Max}
	opts := []backoff.RetryOption{backoff.WithBackOff(b), backoff.WithMaxElapsedTime(p.MaxElapsed)}
	if notify != nil {
		opts = append(opts, backoff.WithNotify(backoff.Notify(notify)))
	}
	return backoff.Retry(ctx, backoff.Operation[T](op), opts...)
}

// Permanent marks err as not worth another try: Do returns it at once.
func Permanent(err error) error { return backoff.Permanent(err) }
