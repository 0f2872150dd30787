// Package bench holds the measurements shared by the Go benchmarks and the
// publisher's bench mode, so that both measure the same thing.
package bench

import (
	"fmt"
	"strconv"
	"time"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
)

// PasskeysPerUser is how many passkeys each seeded user has.
const PasskeysPerUser = 3

// UserID names seeded user i.
func UserID(i int) string { return "user-" + strconv.Itoa(i) }

// PasskeyID names passkey j of a seeded user.
func PasskeyID(j int) string { return "pk-" + strconv.Itoa(j) }

// SeedUsers writes users users of org "bench-org", each with a password and
// PasskeysPerUser ready passkeys, in transactions of 10,000.
func SeedUsers(s *storage.Store, users int) error {
	at := time.Now().UTC()
	for start := 0; start < users; start += 10000 {
		err := s.Update(func(tx *storage.Tx) error {
			for i := start; i < min(start+10000, users); i++ {
				u := &passkey.User{ID: UserID(i), ResourceOwner: "bench-org", Sequence: 1, CreationDate: at, ChangeDate: at, Password: true}
				for j := range PasskeysPerUser {
					u.Passkeys = append(u.Passkeys, passkey.Passkey{ID: PasskeyID(j), Name: "Security key " + strconv.Itoa(j), State: passkey.StateReady})
				}
				if err := tx.PutUser(u); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// RemoveBatched removes n passkeys from seeded users, batch removals per
// transaction, doing in each what the worker's transaction does for a
// removal: read the user, apply the rule, write the user, encode the reply
// and keep it as the outcome. Removal k takes passkey k/users of user
// k%users, so n may be up to users*PasskeysPerUser. offset shifts k, so
// that several runs on one store remove different passkeys.
func RemoveBatched(s *storage.Store, users, offset, n, batch int) error {
	p := passkey.Principal{Subject: "bench-admin", Org: "bench-org", Admin: true}
	at := time.Now().UTC()
	expires := at.Add(command.DefaultRetention)
	for start := offset; start < offset+n; start += batch {
		err := s.Update(func(tx *storage.Tx) error {
			for k := start; k < min(start+batch, offset+n); k++ {
				id := UserID(k % users)
				// As the worker does: look for an outcome of the same
				// command first.
				key := command.MsgIDKey("bench-" + strconv.Itoa(k))
				if o, err := tx.Outcome(id, key); err != nil || o != nil {
					return fmt.Errorf("removal %d: outcome %v, %v", k, o, err)
				}
				u, err := tx.User(id)
				if err != nil {
					return err
				}
				next, err := passkey.RemovePasskey(p, id, u, passkey.RemoveRequest{TokenID: PasskeyID(k / users)}, at)
				if err != nil {
					return fmt.Errorf("removal %d: %w", k, err)
				}
				if err := tx.PutUser(next); err != nil {
					return err
				}
				if err := tx.PutOutcome(id, key, &storage.Outcome{Subject: partition.CommandSubject(string(passkey.OpRemove), id), Answer: passkey.Changed(next), Expires: expires}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
