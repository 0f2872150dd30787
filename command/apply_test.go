package command

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
)

// applierFixture is an Applier on a real store with a pinned clock.
type applierFixture struct {
	a     *Applier
	store *storage.Store // a.Store's
	keys  *testenv.Keys
	now   time.Time
	seq   uint64
}

func newApplier(tb testing.TB) *applierFixture {
	tb.Helper()
	keys := testenv.NewKeys(tb)
	f := &applierFixture{keys: keys, now: time.Now().UTC()}
	f.store = keys.Trust(tb, testenv.MustOpenStore(tb))
	f.a = &Applier{Store: f.store, Verifier: keys.Verifier(tb), Retention: 7 * 24 * time.Hour, Log: zerolog.Nop()}
	return f
}

// cmd builds the next stream command, stored "now".
func (f *applierFixture) cmd(tb testing.TB, subject, sub, msgID string, body any, scopes ...string) *Command {
	tb.Helper()
	f.seq++
	raw, err := json.Marshal(body)
	if err != nil {
		tb.Fatal(err)
	}
	org := ""
	if len(scopes) > 0 {
		org = "org1"
	}
	h := nats.Header{}
	h.Set(HeaderAuthorization, testenv.Bearer(f.keys.Mint(tb, testenv.Token{Subject: sub, Org: org, Scopes: scopes, Now: f.now})))
	if msgID != "" {
		h.Set(HeaderMsgID, msgID)
	}
	return &Command{Subject: subject, Header: Header(h), Body: raw, StreamSeq: f.seq, Timestamp: f.now}
}

func (f *applierFixture) apply(tb testing.TB, cmds ...*Command) []Result {
	tb.Helper()
	c := f.a.Check(cmds)
	res, err := f.a.commitFrom(c, 0)
	if err != nil {
		tb.Fatal(err)
	}
	return res
}

func replyID(tb testing.TB, r Result) string {
	tb.Helper()
	if r.Transient != nil {
		tb.Fatalf("transient: %v", r.Transient)
	}
	if r.Answer.Err == nil {
		return "seq " + strconv.FormatUint(r.Answer.Sequence, 10)
	}
	return r.Answer.Err.ID
}

const adminScope = "passkeys:admin"

// One batch holds several commands for one user: each sees the ones before
// it, in stream order, and each applied change takes the next sequence.
func TestProcessBatchInOrder(t *testing.T) {
	f := newApplier(t)
	sync := map[string]any{"resourceOwner": "org1", "passkeys": []map[string]string{{"id": "pk-1", "state": "ready"}, {"id": "pk-2", "state": "ready"}}}
	res := f.apply(t,
		f.cmd(t, "passkeys.cmd.sync.u1", "admin", "", sync, adminScope),
		f.cmd(t, "passkeys.cmd.remove.u1", "u1", "m1", map[string]any{"tokenId": "pk-1"}),
		f.cmd(t, "passkeys.cmd.remove.u1", "u1", "", map[string]any{"tokenId": "pk-2"}),
		f.cmd(t, "passkeys.cmd.remove.u1", "u1", "m1", map[string]any{"tokenId": "pk-1"}),
		f.cmd(t, "passkeys.cmd.remove.u1", "u1", "", map[string]any{"tokenId": "pk-1"}),
		f.cmd(t, "passkeys.cmd.remove.u1", "admin", "", map[string]any{"tokenId": "pk-2", "force": true}, adminScope),
	)
	want := []string{"seq 1", "seq 2", passkey.IDPasskeyLast, "seq 2", passkey.IDPasskeyNotFound, "seq 3"}
	for i, w := range want {
		if got := replyID(t, res[i]); got != w {
			t.Errorf("command %d: %s, want %s", i, got, w)
		}
	}
	if !res[3].Repeat || !reflect.DeepEqual(res[3].Answer, res[1].Answer) {
		t.Errorf("the repeat of m1 in the same batch is not the first reply")
	}
	err := f.store.View(func(tx *storage.Tx) error {
		if got := tx.AppliedSeq(); got != f.seq {
			t.Errorf("applied seq %d, want %d", got, f.seq)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A repeat that arrives days later, past JetStream's duplicate window, is a
// new stream message: it gets the first reply, and the outcome record is
// kept a full retention from then, as long as that message can be replayed.
func TestRepeatExtendsOutcome(t *testing.T) {
	f := newApplier(t)
	f.apply(t, f.cmd(t, "passkeys.cmd.sync.u1", "admin", "s1", map[string]any{"resourceOwner": "org1", "password": true}, adminScope))
	first := f.apply(t, f.cmd(t, "passkeys.cmd.sync.u1", "admin", "s2", map[string]any{"resourceOwner": "org1", "password": true}, adminScope))
	f.now = f.now.Add(5 * 24 * time.Hour)
	later := f.apply(t, f.cmd(t, "passkeys.cmd.sync.u1", "admin", "s2", map[string]any{"resourceOwner": "org1", "password": true}, adminScope))
	if !later[0].Repeat || !reflect.DeepEqual(first[0].Answer, later[0].Answer) {
		t.Fatalf("late repeat: %+v, want %+v", later[0].Answer, first[0].Answer)
	}
	err := f.store.View(func(tx *storage.Tx) error {
		o, err := tx.Outcome("u1", MsgIDKey(passkey.ScopeMsgID(testenv.Issuer, "admin", "s2")))
		if err != nil {
			return err
		}
		if want := f.now.Add(f.a.Retention); !o.Expires.Equal(want) {
			t.Errorf("outcome expires %v, want %v", o.Expires, want)
		}
		u, err := tx.User("u1")
		if err != nil {
			return err
		}
		if u.Sequence != 2 {
			t.Errorf("sequence %d, want 2: the repeat changed the user", u.Sequence)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A Nats-Msg-Id is a key among the records of the user the command names,
// scoped to the principal. Within JetStream's duplicate window a reuse never
// reaches the worker (the service answers it); past the window, the same
// key on another user's command is that user's own command, the same key
// by another principal is that principal's own command, and the same key
// on another command by the same principal for the same user is refused as
// reused, never answered with the other's reply.
func TestMsgIDKeptPerUser(t *testing.T) {
	f := newApplier(t)
	sync := map[string]any{"resourceOwner": "org1", "passkeys": []map[string]string{{"id": "pk-1", "state": "ready"}, {"id": "pk-2", "state": "ready"}}}
	res := f.apply(t,
		f.cmd(t, "passkeys.cmd.sync.u1", "admin", "same", sync, adminScope),
		f.cmd(t, "passkeys.cmd.sync.u2", "admin", "same", sync, adminScope),
		f.cmd(t, "passkeys.cmd.remove.u1", "admin", "same", map[string]any{"tokenId": "pk-1"}, adminScope),
		f.cmd(t, "passkeys.cmd.sync.u2", "admin", "same", sync, adminScope),
		f.cmd(t, "passkeys.cmd.sync.bad.user", "admin", "same", sync, adminScope),
		f.cmd(t, "passkeys.cmd.remove.u2", "u2", "same", map[string]any{"tokenId": "pk-1"}),
	)
	want := []string{"seq 1", "seq 1", passkey.IDMsgIDReused, "seq 1", passkey.IDSubjectInvalid, "seq 2"}
	for i, w := range want {
		if got := replyID(t, res[i]); got != w {
			t.Errorf("command %d: %s, want %s", i, got, w)
		}
	}
	if res[1].Repeat || !res[3].Repeat || !reflect.DeepEqual(res[1].Answer, res[3].Answer) {
		t.Errorf("u2's repeat is not u2's first reply")
	}
	err := f.store.View(func(tx *storage.Tx) error {
		u, err := tx.User("u1")
		if err != nil || u == nil || len(u.Passkeys) != 2 {
			t.Errorf("u1 = %+v, %v; the reused key must change nothing", u, err)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A refusal found before the store is read (bad token, bad body) is still
// a definitive outcome: stored, and repeated as it was.
func TestRefusalIsStored(t *testing.T) {
	f := newApplier(t)
	c := f.cmd(t, "passkeys.cmd.remove.u1", "u1", "bad", "not an object")
	first := f.apply(t, c)
	if got := replyID(t, first[0]); got != passkey.IDBodyInvalid {
		t.Fatalf("got %s", got)
	}
	again := f.apply(t, c)
	if !again[0].Repeat || !reflect.DeepEqual(first[0].Answer, again[0].Answer) {
		t.Fatalf("redelivery: %+v", again[0].Answer)
	}
}

// A stored outcome answers only the same command: the same subject, body
// bytes and principal (issuer and subject of the token). The same
// Nats-Msg-Id on another body, by another principal, or without a token is
// another command: REQUEST-MSGID-REUSED, never the first one's reply. A new
// token of the same principal, or a new Reply-To, is still the same command.
func TestRepeatMustBeTheSameCommand(t *testing.T) {
	f := newApplier(t)
	f.apply(t, f.cmd(t, "passkeys.cmd.sync.u1", "admin", "", map[string]any{"resourceOwner": "org1", "password": true,
		"passkeys": []map[string]string{{"id": "pk-1", "state": "ready"}, {"id": "pk-2", "state": "ready"}}}, adminScope))
	first := f.apply(t, f.cmd(t, "passkeys.cmd.remove.u1", "u1", "rm-1", map[string]any{"tokenId": "pk-1"}))
	if got := replyID(t, first[0]); got != "seq 2" {
		t.Fatalf("first removal: %s", got)
	}
	retry := f.cmd(t, "passkeys.cmd.remove.u1", "u1", "rm-1", map[string]any{"tokenId": "pk-1"}) // a fresh token
	nats.Header(retry.Header).Set(HeaderReplyTo, "_INBOX.elsewhere")
	if res := f.apply(t, retry); !res[0].Repeat || !reflect.DeepEqual(res[0].Answer, first[0].Answer) {
		t.Fatalf("retry with a new token and inbox: %+v", res[0].Answer)
	}
	noToken := f.cmd(t, "passkeys.cmd.remove.u1", "u1", "rm-1", map[string]any{"tokenId": "pk-1"})
	nats.Header(noToken.Header).Del(HeaderAuthorization)
	otherBytes := f.cmd(t, "passkeys.cmd.remove.u1", "u1", "rm-1", nil)
	otherBytes.Body = []byte(`{"tokenId": "pk-1"}`)
	for _, c := range []struct {
		name string
		cmd  *Command
		want string
	}{
		// The same principal, another command: refused, not answered.
		{"OtherBody", f.cmd(t, "passkeys.cmd.remove.u1", "u1", "rm-1", map[string]any{"tokenId": "pk-2"}), passkey.IDMsgIDReused},
		{"SameBodyOtherBytes", otherBytes, passkey.IDMsgIDReused},
		// Another principal, or none: its own command, never the first one's reply.
		{"OtherPrincipal", f.cmd(t, "passkeys.cmd.remove.u1", "admin", "rm-1", map[string]any{"tokenId": "pk-1"}, adminScope), passkey.IDPasskeyNotFound},
		{"NoToken", noToken, passkey.IDAuthMissing},
	} {
		t.Run(c.name, func(t *testing.T) {
			f.seq++
			c.cmd.StreamSeq = f.seq // in stream order, after the commands made before it
			res := f.apply(t, c.cmd)
			if got := replyID(t, res[0]); got != c.want {
				t.Fatalf("got %s, want %s", got, c.want)
			}
			if res[0].Repeat {
				t.Fatal("answered as a repeat")
			}
		})
	}
	// A command without a token does not occupy the id of the principal who
	// uses it next.
	bare := f.cmd(t, "passkeys.cmd.remove.u1", "u1", "rm-2", map[string]any{"tokenId": "pk-2"})
	nats.Header(bare.Header).Del(HeaderAuthorization)
	if got := replyID(t, f.apply(t, bare)[0]); got != passkey.IDAuthMissing {
		t.Fatalf("without a token: %s", got)
	}
	if got := replyID(t, f.apply(t, f.cmd(t, "passkeys.cmd.remove.u1", "admin", "rm-2", map[string]any{"tokenId": "pk-2"}, adminScope))[0]); got != "seq 3" {
		t.Fatalf("an administrator's command under the id a bare command used: %s, want applied", got)
	}
}

// A principal's plain id (published straight into the stream) and the same
// id scoped to it (as the endpoints and the publisher store it) are one key:
// either way, the second is a repeat of the first.
func TestPlainAndScopedIDsAreOneKey(t *testing.T) {
	f := newApplier(t)
	body := map[string]any{"resourceOwner": "org1", "password": true}
	first := f.apply(t, f.cmd(t, "passkeys.cmd.sync.u1", "admin", "batch-7", body, adminScope))
	again := f.apply(t, f.cmd(t, "passkeys.cmd.sync.u1", "admin", passkey.ScopeMsgID(testenv.Issuer, "admin", "batch-7"), body, adminScope))
	if !again[0].Repeat || !reflect.DeepEqual(first[0].Answer, again[0].Answer) {
		t.Fatalf("the scoped form of a plain id: %+v, want the repeat of %+v", again[0].Answer, first[0].Answer)
	}
}

// An outcome that a version before scoped ids kept under the plain id (a
// record without a fingerprint) still answers that command's redelivery
// after an upgrade, for commands stamped within a retention of the change
// (scopedSince); later ones are not looked up, by their stream timestamp.
func TestOutcomeUnderPlainIDFromBefore(t *testing.T) {
	for _, c := range []struct {
		name   string
		at     time.Time
		repeat bool
	}{{"WithinTheRetention", scopedSince.Add(24 * time.Hour), true}, {"AfterIt", scopedSince.Add(8 * 24 * time.Hour), false}} {
		t.Run(c.name, func(t *testing.T) {
			f := newApplier(t)
			f.now = c.at
			body := map[string]any{"resourceOwner": "org1", "password": true}
			first := f.apply(t, f.cmd(t, "passkeys.cmd.sync.u1", "admin", "", body, adminScope))
			err := f.store.Update(func(tx *storage.Tx) error {
				return tx.PutOutcome("u1", MsgIDKey("old-1"), &storage.Outcome{Subject: "passkeys.cmd.sync.u1", Answer: first[0].Answer,
					Expires: f.now.Add(time.Hour)})
			})
			if err != nil {
				t.Fatal(err)
			}
			res := f.apply(t, f.cmd(t, "passkeys.cmd.sync.u1", "admin", "old-1", body, adminScope))
			if res[0].Repeat != c.repeat || (c.repeat && !reflect.DeepEqual(res[0].Answer, first[0].Answer)) {
				t.Fatalf("redelivery after the upgrade: repeat %v, want %v: %+v", res[0].Repeat, c.repeat, res[0].Answer)
			}
		})
	}
}

// A Nats-Msg-Id that could not be a key (over the bound, or not printable
// ASCII) is refused with REQUEST-HEADER-INVALID, and fails only its own
// command: the others of its batch are applied.
func TestMsgIDBounded(t *testing.T) {
	f := newApplier(t)
	sync := func(user, msgID string) *Command {
		return f.cmd(t, "passkeys.cmd.sync."+user, "admin", msgID, map[string]any{"resourceOwner": "org1", "password": true}, adminScope)
	}
	res := f.apply(t,
		sync("u1", "ok-1"),
		sync("u2", strings.Repeat("x", 40<<10)),
		sync("u3", "with space"),
		sync("u4", "caf\u00e9"),
		sync("u5", strings.Repeat("y", passkey.MaxScopedMsgIDLen)),
		sync("u6", strings.Repeat("z", passkey.MaxScopedMsgIDLen+1)),
	)
	want := []string{"seq 1", passkey.IDHeaderInvalid, passkey.IDHeaderInvalid, passkey.IDHeaderInvalid, "seq 1", passkey.IDHeaderInvalid}
	for i, w := range want {
		if got := replyID(t, res[i]); got != w {
			t.Errorf("command %d: %s, want %s", i, got, w)
		}
	}
}

// A damaged outcome record fails only its own command, not the batch.
func TestCorruptOutcomeFailsOnlyItsCommand(t *testing.T) {
	f := newApplier(t)
	// A record of bytes the store never writes, where u1's command with
	// Nats-Msg-Id "damaged" keeps its outcome (storage's layout: the users
	// bucket, the user id, a zero byte, the outcome key).
	path := f.store.Path()
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		key := append([]byte("u1\x00"), MsgIDKey(passkey.ScopeMsgID(testenv.Issuer, "u1", "damaged"))...)
		return tx.Bucket([]byte("users")).Put(key, []byte{9, 9})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if f.store, err = storage.Open(path, storage.Options{}); err != nil {
		t.Fatal(err)
	}
	f.a.Store = f.store
	t.Cleanup(func() { f.store.Close() })
	res := f.apply(t,
		f.cmd(t, "passkeys.cmd.sync.u1", "admin", "", map[string]any{"resourceOwner": "org1", "password": true}, adminScope),
		f.cmd(t, "passkeys.cmd.remove.u1", "u1", "damaged", map[string]any{"tokenId": "pk-1"}),
	)
	if got := replyID(t, res[0]); got != "seq 1" {
		t.Fatalf("the healthy command: %s", got)
	}
	if res[1].Transient == nil {
		t.Fatalf("the command with a damaged outcome: %+v, want a transient failure", res[1])
	}
}

// A token is judged at the command's stream timestamp: a redelivery or a
// replay of a command whose token has expired since is judged as the
// original was, and a command stored after its token expired is refused.
func TestTokenJudgedAtStreamTime(t *testing.T) {
	f := newApplier(t)
	f.now = time.Now().Add(-3 * time.Hour) // the commands were stored three hours ago...
	sync := f.cmd(t, "passkeys.cmd.sync.u1", "admin", "", map[string]any{"resourceOwner": "org1", "password": true}, adminScope)
	late := f.cmd(t, "passkeys.cmd.sync.u2", "admin", "", map[string]any{"resourceOwner": "org1", "password": true}, adminScope)
	late.Timestamp = late.Timestamp.Add(2 * time.Hour) // ...but this one only after its token expired
	f.now = time.Now()                                 // and are processed now
	res := f.apply(t, sync, late)
	if got := replyID(t, res[0]); got != "seq 1" {
		t.Errorf("command stored while its token was valid: %s", got)
	}
	if got := replyID(t, res[1]); got != passkey.IDAuthExpired {
		t.Errorf("command stored after its token expired: %s", got)
	}
}

// Check runs in parallel; every command still gets its own answer, in its
// place, and commits in stream order.
func TestCheckInParallelKeepsOrder(t *testing.T) {
	f := newApplier(t)
	var cmds []*Command
	for i := range 300 {
		user := "u" + strconv.Itoa(i)
		cmds = append(cmds, f.cmd(t, "passkeys.cmd.sync."+user, "admin", "", map[string]any{"resourceOwner": "org1", "password": true,
			"passkeys": []map[string]string{{"id": "pk-" + user, "state": "ready"}}}, adminScope))
		if i%3 == 0 { // and a removal of that user's passkey right behind its sync
			cmds = append(cmds, f.cmd(t, "passkeys.cmd.remove."+user, user, "", map[string]any{"tokenId": "pk-" + user}))
		}
	}
	res := f.apply(t, cmds...)
	for i, c := range cmds {
		want := "seq 1"
		if strings.Contains(c.Subject, ".remove.") {
			want = "seq 2"
		}
		if got := replyID(t, res[i]); got != want || res[i].UserID != c.Subject[strings.LastIndex(c.Subject, ".")+1:] {
			t.Fatalf("command %d (%s): %s for %s, want %s", i, c.Subject, got, res[i].UserID, want)
		}
	}
}
