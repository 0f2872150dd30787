package command

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/storage"
)

// A command that breaks every transaction it is part of (a fault of this
// machine, as the store sees it) holds up the commands behind it: the ones
// before it are applied and reported in order, none after it is, the
// partition pauses and tries again, and a policy with MaxElapsed gives up
// there. Once the fault passes, the same call applies them all in order.
func TestCommitInOrderNeverSkips(t *testing.T) {
	f := newApplier(t)
	broken := true
	f.a.Store = breakingStore{f.store, func(tx *storage.Tx) error {
		if u, err := tx.User("u2"); broken && (u != nil || err != nil) {
			return errors.New("this command breaks the commit")
		}
		return nil
	}}
	sync := func(user string) *Command {
		return f.cmd(t, "passkeys.cmd.sync."+user, "admin", "", map[string]any{"resourceOwner": "org1", "password": true,
			"passkeys": []map[string]string{{"id": "pk-1", "state": "ready"}}}, adminScope)
	}
	batch := []*Command{sync("u1"), sync("u2"), sync("u3")}
	checked := f.a.Check(batch)
	var done []int
	pauses := 0
	o := InOrder{
		Wait:    retry.Policy{First: time.Millisecond, Factor: 2, Max: 5 * time.Millisecond, MaxElapsed: 50 * time.Millisecond},
		Done:    func(i int, r Result) { done = append(done, i) },
		Pausing: func(from int) { pauses++ },
	}
	err := f.a.CommitInOrder(context.Background(), checked, o)
	if !errors.Is(err, ErrGaveUp) || pauses == 0 {
		t.Fatalf("CommitInOrder: %v after %d pauses, want ErrGaveUp after some", err, pauses)
	}
	err = f.store.View(func(tx *storage.Tx) error {
		for _, u := range []string{"u2", "u3"} {
			if got, err := tx.User(u); got != nil || err != nil {
				t.Errorf("%s applied past the command that could not be: %+v %v", u, got, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// A context that ends first ends the wait, with its error.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	o.Wait.MaxElapsed = 0
	if err := f.a.CommitInOrder(ctx, checked, o); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CommitInOrder with an ending context: %v", err)
	}

	broken = false
	done = nil
	checked = f.a.Check(batch)
	if err := f.a.CommitInOrder(context.Background(), checked, o); err != nil {
		t.Fatal(err)
	}
	if len(done) != 3 || done[0] != 0 || done[2] != 2 {
		t.Fatalf("done %v, want 0 1 2", done)
	}
	err = f.store.View(func(tx *storage.Tx) error {
		for _, u := range []string{"u1", "u2", "u3"} {
			if got, err := tx.User(u); got == nil || got.Sequence != 1 || err != nil {
				t.Errorf("%s = %+v %v, want sequence 1", u, got, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A partition that is not held takes no command: CommitInOrder stops at
// once with ErrFenced, nothing applied.
func TestCommitInOrderFenced(t *testing.T) {
	f := newApplier(t)
	f.a.Fence = func() error { return errors.New("lease lost") }
	checked := f.a.Check([]*Command{f.cmd(t, "passkeys.cmd.sync.u1", "admin", "",
		map[string]any{"resourceOwner": "org1", "password": true}, adminScope)})
	if err := f.a.CommitInOrder(context.Background(), checked, InOrder{Wait: retry.Wait}); !errors.Is(err, ErrFenced) {
		t.Fatalf("CommitInOrder on a partition not held: %v", err)
	}
}

// breakingStore is a store whose transactions fail when broken says so
// of what they hold before they commit: a fault of this machine, as an
// Applier sees it.
type breakingStore struct {
	*storage.Store
	broken func(tx *storage.Tx) error
}

func (b breakingStore) Update(fn func(*storage.Tx) error) error {
	return b.Store.Update(func(tx *storage.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return b.broken(tx)
	})
}
