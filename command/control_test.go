package command

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/trust"
)

// control is the next stream message: a control entry putting kids in
// force, with eras before it (a partition's first entry) when given.
func (f *applierFixture) control(tb testing.TB, before []trust.Era, kids ...string) *Command {
	tb.Helper()
	e, err := trust.NewEntry(f.keys.PublicSet(kids...), testenv.Issuer, testenv.Audience, auth.RuleRFC8032)
	if err != nil {
		tb.Fatal(err)
	}
	e.Before = before
	body, err := e.Encode()
	if err != nil {
		tb.Fatal(err)
	}
	f.seq++
	return &Command{Subject: "passkeys.part.0.control", Body: body, StreamSeq: f.seq, Timestamp: f.now, Control: true}
}

// syncAs is the next command: an administrator's sync of user, its token
// signed with kid, stored at at.
func (f *applierFixture) syncAs(tb testing.TB, user, kid string, at time.Time) *Command {
	tb.Helper()
	c := f.cmd(tb, "passkeys.cmd.sync."+user, "admin", "", map[string]any{"resourceOwner": "org1", "password": true}, adminScope)
	c.Header = Header(nats.Header{HeaderAuthorization: {testenv.Bearer(f.keys.Mint(tb, testenv.Token{Kid: kid, Subject: "admin", Org: "org1",
		Scopes: []string{adminScope}, Now: at}))}})
	c.Timestamp = at
	return c
}

func wantAnswer(tb testing.TB, name string, r Result, id string) {
	tb.Helper()
	got := ""
	if r.Answer.Err != nil {
		got = r.Answer.Err.ID
	}
	if r.Transient != nil || got != id {
		tb.Errorf("%s: answer %q (transient %v), want %q", name, got, r.Transient, id)
	}
}

// A key set is in force from its control entry on, among the commands of
// one batch: a token of the key it retired is refused right after it, one
// of the key it added is accepted.
func TestKeySetInForceFromItsEntry(t *testing.T) {
	f := newApplier(t)
	res := f.apply(t, f.control(t, nil, "EdDSA"), f.syncAs(t, "u1", "EdDSA", f.now), f.syncAs(t, "u2", "ES256", f.now),
		f.control(t, nil, "ES256"), f.syncAs(t, "u3", "EdDSA", f.now), f.syncAs(t, "u4", "ES256", f.now))
	if !res[0].Control || !res[3].Control {
		t.Fatalf("control entries answered as commands: %+v %+v", res[0], res[3])
	}
	wantAnswer(t, "EdDSA under the EdDSA set", res[1], "")
	wantAnswer(t, "ES256 under the EdDSA set", res[2], passkey.IDAuthKeyUnknown)
	wantAnswer(t, "EdDSA after the ES256 set", res[4], passkey.IDAuthKeyUnknown)
	wantAnswer(t, "ES256 under the ES256 set", res[5], "")
}

// A batch checked before the batch ahead of it committed a new key set
// (the two stages overlap) is judged at its commit by the set in force
// there, not by the guess its check made.
func TestGuessedKeySetIsCheckedAgain(t *testing.T) {
	f := newApplier(t)
	f.apply(t, f.control(t, nil, "EdDSA"))
	ahead := f.a.Check([]*Command{f.control(t, nil, "ES256")})
	behind := f.a.Check([]*Command{f.syncAs(t, "u1", "EdDSA", f.now), f.syncAs(t, "u2", "ES256", f.now)})
	if behind.checked[0].keys == nil || behind.checked[0].principal.Subject != "admin" {
		t.Fatalf("the check's guess: the set before the new entry, by which the EdDSA token verifies; got %+v", behind.checked[0].principal)
	}
	if _, err := f.a.commitFrom(ahead, 0); err != nil {
		t.Fatal(err)
	}
	res, err := f.a.commitFrom(behind, 0)
	if err != nil {
		t.Fatal(err)
	}
	wantAnswer(t, "EdDSA after the ES256 set", res[0], passkey.IDAuthKeyUnknown)
	wantAnswer(t, "ES256 after the ES256 set", res[1], "")
}

// Commands stored before a partition's first control entry are judged by
// its eras (the old key history's) at their stream timestamps; those
// after it by its own set. A store that keeps no entry judges nothing: the
// command waits, and nothing of it is committed.
func TestCommandsBeforeTheFirstEntry(t *testing.T) {
	keys := testenv.NewKeys(t)
	f := &applierFixture{keys: keys, now: time.Now().UTC(), store: testenv.MustOpenStore(t)}
	f.a = &Applier{Store: f.store, Verifier: keys.Verifier(t), Retention: time.Hour, Log: zerolog.Nop()}
	rotated := f.now.Add(-time.Minute)
	early := f.syncAs(t, "u0", "EdDSA", rotated.Add(-time.Second))
	if res := f.apply(t, early); !errors.Is(res[0].Transient, errNoKeySet) {
		t.Fatalf("with no key set: %+v, want it held back", res[0])
	}
	cmds := []*Command{early, f.syncAs(t, "u1", "EdDSA", rotated.Add(time.Second)), f.syncAs(t, "u2", "ES256", rotated.Add(time.Second))}
	first := f.control(t, []trust.Era{{Keys: keys.PublicSet("EdDSA"), Issuer: testenv.Issuer, Audience: testenv.Audience},
		{From: rotated, Keys: keys.PublicSet("ES256"), Issuer: testenv.Issuer, Audience: testenv.Audience}}, "RS256")
	if err := f.store.Update(func(tx *storage.Tx) error { return tx.PutControl(first.StreamSeq, first.Body) }); err != nil {
		t.Fatal(err) // as trust.AwaitEntries puts it there
	}
	res := f.apply(t, append(cmds, first, f.syncAs(t, "u3", "ES256", f.now), f.syncAs(t, "u4", "RS256", f.now))...)
	wantAnswer(t, "EdDSA before the rotation", res[0], "")
	wantAnswer(t, "EdDSA after the rotation", res[1], passkey.IDAuthKeyUnknown)
	wantAnswer(t, "ES256 after the rotation", res[2], "")
	wantAnswer(t, "ES256 after the first entry", res[4], passkey.IDAuthKeyUnknown)
	wantAnswer(t, "RS256 after the first entry", res[5], "")
}

// A control entry that is not a key set is left out, alike everywhere:
// the set before it stays in force.
func TestBadControlEntryLeftOut(t *testing.T) {
	f := newApplier(t)
	f.apply(t, f.control(t, nil, "EdDSA"))
	bad := f.control(t, nil, "ES256")
	var doc map[string]any
	if err := json.Unmarshal(bad.Body, &doc); err != nil {
		t.Fatal(err)
	}
	doc["jwks"] = map[string]any{"keys": []any{map[string]any{"kty": "oct", "k": "c2VjcmV0"}}} // a shared secret
	bad.Body, _ = json.Marshal(doc)
	res := f.apply(t, bad, f.syncAs(t, "u1", "EdDSA", f.now))
	if !res[0].Control {
		t.Fatalf("the bad entry: %+v", res[0])
	}
	wantAnswer(t, "EdDSA after a bad entry", res[1], "")
}

// controlUnder is the next stream message: a control entry putting the
// EdDSA key in force under verification rule rule and rules version rules.
func (f *applierFixture) controlUnder(tb testing.TB, rule auth.Rule, rules int) *Command {
	tb.Helper()
	c := f.control(tb, nil, "EdDSA")
	e, err := trust.NewEntry(f.keys.PublicSet("EdDSA"), testenv.Issuer, testenv.Audience, rule)
	if err == nil {
		e.Rules = rules
		c.Body, err = e.Encode()
	}
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// torsion is syncAs with the token signed again with a small-order part in
// R (testenv.Keys.Torsion): refused by RFC 8032, accepted by ZIP 215.
func (f *applierFixture) torsion(tb testing.TB, user string) *Command {
	tb.Helper()
	c := f.syncAs(tb, user, "EdDSA", f.now)
	tok := strings.TrimPrefix(c.Header.ValuesFold(HeaderAuthorization)[0], "Bearer ")
	c.Header = Header(nats.Header{HeaderAuthorization: {testenv.Bearer(f.keys.Torsion(tb, tok))}})
	return c
}

// The verification rule changes at its control entry: a signature only
// ZIP 215 accepts is refused before it and accepted after it, also in a
// batch that checks its signatures together. An entry of a rule this
// version does not know makes the partition wait there.
func TestVerificationRuleFromItsEntry(t *testing.T) {
	f := newApplier(t)
	cmds := []*Command{f.control(t, nil, "EdDSA"), f.torsion(t, "u0"), f.controlUnder(t, auth.RuleZIP215, 0)}
	for i := range 8 {
		cmds = append(cmds, f.torsion(t, fmt.Sprint("u", i+1)), f.syncAs(t, fmt.Sprint("v", i), "EdDSA", f.now))
	}
	res := f.apply(t, cmds...)
	wantAnswer(t, "before the ZIP 215 entry", res[1], passkey.IDAuthSignature)
	for i := 3; i < len(res); i++ {
		wantAnswer(t, fmt.Sprint("after the ZIP 215 entry, ", i), res[i], "")
	}

	newer := f.controlUnder(t, auth.RuleZIP215, 0)
	newer.Body = []byte(strings.Replace(string(newer.Body), `"verify":"zip215"`, `"verify":"zip999"`, 1))
	res = f.apply(t, newer, f.syncAs(t, "w", "EdDSA", f.now))
	if !errors.Is(res[0].Transient, trust.ErrNewer) || res[1].Transient == nil {
		t.Fatalf("an entry of an unknown rule: %+v, then %+v; want both held back", res[0], res[1])
	}
}

// withTTL is syncAs with a Nats-TTL header.
func (f *applierFixture) withTTL(tb testing.TB, user string) *Command {
	tb.Helper()
	c := f.syncAs(tb, user, "EdDSA", f.now)
	c.Header[HeaderTTL] = []string{"1h"}
	return c
}

// The rules version changes at its control entry: a command stored with a
// Nats-TTL header is applied under rules 1 (as the versions before did)
// and refused after an entry of rules 2; a command checked by a guess that
// missed an entry is checked again by the entry's rules.
func TestRulesVersionFromItsEntry(t *testing.T) {
	f := newApplier(t)
	res := f.apply(t, f.controlUnder(t, auth.RuleRFC8032, 0), f.withTTL(t, "u1"), f.controlUnder(t, auth.RuleRFC8032, 2), f.withTTL(t, "u2"), f.syncAs(t, "u3", "EdDSA", f.now))
	wantAnswer(t, "Nats-TTL under rules 1", res[1], "")
	wantAnswer(t, "Nats-TTL under rules 2", res[3], passkey.IDHeaderInvalid)
	wantAnswer(t, "no Nats-TTL under rules 2", res[4], "")

	// The store is at rules 2; an entry of rules 1 is checked, and the
	// command behind it checked by the store's rules (a guess) before the
	// entry commits: the commit checks it again, by rules 1.
	ahead := f.a.Check([]*Command{f.controlUnder(t, auth.RuleRFC8032, 1)})
	behind := f.a.Check([]*Command{f.withTTL(t, "u4")})
	if behind.checked[0].refusal == nil {
		t.Fatal("the guess (rules 2) did not refuse the Nats-TTL command: the test tests nothing")
	}
	if _, err := f.a.commitFrom(ahead, 0); err != nil {
		t.Fatal(err)
	}
	res, err := f.a.commitFrom(behind, 0)
	if err != nil {
		t.Fatal(err)
	}
	wantAnswer(t, "Nats-TTL after rules 2 then 1", res[0], "")
}
