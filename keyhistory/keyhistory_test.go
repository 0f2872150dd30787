package keyhistory_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/keyhistory"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/topology"
)

// fixture is a NATS server with the key bucket, and a way to open a
// worker's view of it.
type fixture struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	keys   *testenv.Keys
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ns := testenv.StartNATS(t)
	js, err := jetstream.New(testenv.Connect(t, ns.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.CreateStream(context.Background(), topology.Settings{Replicas: 1}.KeyStreamConfig())
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{js: js, stream: st, keys: testenv.NewKeys(t)}
}

// open is one worker's view, with the verifier it feeds.
func (f *fixture) open(t *testing.T) (*keyhistory.History, *auth.Verifier) {
	t.Helper()
	v, err := auth.NewVerifier(f.keys.PublicSet("RS256"), testenv.Issuer, testenv.Audience)
	if err != nil {
		t.Fatal(err)
	}
	return keyhistory.Open(f.js, f.stream, v, zerolog.Nop()), v
}

func (f *fixture) entry(kids ...string) keyhistory.Entry {
	return keyhistory.Entry{Issuer: testenv.Issuer, Audience: testenv.Audience, Keys: f.keys.PublicSet(kids...)}
}

// judge verifies a token of kid at time at, after waiting for the keys of
// that time.
func (f *fixture) judge(t *testing.T, h *keyhistory.History, v *auth.Verifier, kid string, at time.Time) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := h.Await(ctx, at); err != nil {
		t.Fatalf("await the keys of %s: %v", at, err)
	}
	tok := f.keys.Mint(t, testenv.Token{Kid: kid, Subject: "u1", Now: at})
	_, err := v.Verify([]string{testenv.Bearer(tok)}, at)
	return err
}

// The first key set is in force from the beginning; a later one from the
// NATS server's timestamp of its entry plus the margin. A worker that read
// the history before the rotation and has not looked since (a pause, a
// watch that missed it) judges a command stamped after the new set took
// effect only after it has read the history again, so it judges it as every
// other worker does.
func TestRotationReachesAStaleWorker(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	operator, _ := f.open(t)
	if err := operator.Load(ctx); !errors.Is(err, keyhistory.ErrEmpty) {
		t.Fatalf("an empty history: %v", err)
	}
	key, from, err := operator.Append(ctx, f.entry("EdDSA"))
	if err != nil || key != "set.00000001" || !from.IsZero() {
		t.Fatalf("first key set: %q %v %v", key, from, err)
	}
	stale, staleV := f.open(t)
	if err := stale.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.judge(t, stale, staleV, "EdDSA", time.Now()); err != nil {
		t.Fatalf("a token of the first set: %v", err)
	}

	key, from, err = operator.Append(ctx, f.entry("ES256"))
	if err != nil || key != "set.00000002" {
		t.Fatalf("rotation: %q %v", key, err)
	}
	e, err := f.stream.GetLastMsgForSubject(ctx, topology.KeyPrefix+"."+key)
	if err != nil {
		t.Fatal(err)
	}
	if want := e.Time.Add(keyhistory.Margin); !from.Equal(want) {
		t.Fatalf("in force from %s, want the server's timestamp plus the margin, %s", from, want)
	}
	// Before the new set takes effect a command is judged by the old one,
	// after it by the new one: on the stale worker too.
	if err := f.judge(t, stale, staleV, "EdDSA", from.Add(-time.Millisecond)); err != nil {
		t.Errorf("a token of the old set just before the rotation: %v", err)
	}
	if err := f.judge(t, stale, staleV, "EdDSA", from); !errors.Is(err, passkey.ErrAuthKeyUnknown) {
		t.Errorf("a token of the retired set after the rotation, on the stale worker: %v, want AUTH-KEY-UNKNOWN", err)
	}
	if err := f.judge(t, stale, staleV, "ES256", from.Add(time.Second)); err != nil {
		t.Errorf("a token of the new set after the rotation, on the stale worker: %v", err)
	}
	// The same set again changes nothing.
	if key, _, err := operator.Append(ctx, f.entry("ES256")); err != nil || key != "" {
		t.Errorf("the newest set again: %q %v", key, err)
	}
	if stale.Sets() != 2 {
		t.Errorf("the history holds %d sets, want 2", stale.Sets())
	}
}

// An entry that is not a key set (written by hand into the bucket) is left
// out on every worker alike: it neither stops a worker nor changes what it
// trusts. Entries of the version before (e.<nanoseconds>, a bare JWKS) are
// in force from the time their key names.
func TestEntriesThatAreNotKeySets(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	legacy, err := json.Marshal(f.keys.PublicSet("EdDSA"))
	if err != nil {
		t.Fatal(err)
	}
	f.put(t, "e.00000000000000000000", legacy)
	// The version before wrote each later set 5 s ahead of its time.
	rotated := time.Now().Add(5 * time.Second)
	newer, _ := json.Marshal(f.keys.PublicSet("ES256"))
	f.put(t, "e."+jsonNanos(rotated), newer)
	f.put(t, "set.00000001", []byte(`{"issuer":"x","audience":"y","jwks":{"keys":"not keys"}}`))
	h, v := f.open(t)
	if err := h.Load(ctx); err != nil {
		t.Fatalf("a history with a bad entry: %v", err)
	}
	if h.Sets() != 2 {
		t.Fatalf("%d sets, want the 2 of the version before", h.Sets())
	}
	if err := f.judge(t, h, v, "EdDSA", rotated.Add(-time.Millisecond)); err != nil {
		t.Errorf("a command before the old rotation, by the old set: %v", err)
	}
	if err := f.judge(t, h, v, "EdDSA", rotated); !errors.Is(err, passkey.ErrAuthKeyUnknown) {
		t.Errorf("a command after the old rotation, by a retired key: %v", err)
	}
	// The next provisioned set follows the bad one.
	if key, _, err := h.Append(ctx, f.entry("RS256")); err != nil || key != "set.00000002" {
		t.Fatalf("append after a bad entry: %q %v", key, err)
	}
}

// Now is the key bucket's leader's clock, read again once the last reading
// is old: what an endpoint judges a request at.
func TestNow(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	h, _ := f.open(t)
	if _, _, err := h.Append(ctx, f.entry("EdDSA")); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	now, err := h.Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One machine: the server's clock is this clock.
	if now.Before(before.Add(-time.Second)) || now.After(time.Now().Add(time.Second)) {
		t.Fatalf("Now = %s, the machine's clock says %s", now, before)
	}
}

func jsonNanos(t time.Time) string {
	b, _ := json.Marshal(t.UnixNano())
	return string(b)
}

// put writes an entry under key as an operator could by hand.
func (f *fixture) put(t *testing.T, key string, value []byte) {
	t.Helper()
	if _, err := f.js.Publish(context.Background(), topology.KeyPrefix+"."+key, value); err != nil {
		t.Fatal(err)
	}
}

// Once stored, an entry means the same to every worker that ever reads it:
// a worker that read the history before an operator deleted an entry,
// wrote one again under its key, or wrote a set in the form of the version
// before (in force from a time of its choosing) judges as a worker that
// reads the history only afterwards; and the next provisioned set is read
// alike by both.
func TestEntriesCannotBeRewritten(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	operator, _ := f.open(t)
	if _, _, err := operator.Append(ctx, f.entry("EdDSA")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := operator.Append(ctx, f.entry("ES256")); err != nil {
		t.Fatal(err)
	}
	before, beforeV := f.open(t)
	if err := before.Load(ctx); err != nil {
		t.Fatal(err)
	}
	// A delete marker, and a rewrite, of set 2 (what `nats kv del` and `nats
	// kv put` send), and a set in the old form, in force from an hour ago.
	del := nats.NewMsg(topology.KeyPrefix + ".set.00000002")
	del.Header.Set("KV-Operation", "DEL")
	if _, err := f.js.PublishMsg(ctx, del); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(f.entry("RS256"))
	f.put(t, "set.00000002", raw)
	f.put(t, "set.00000001", raw)
	old, _ := json.Marshal(f.keys.PublicSet("PS256"))
	f.put(t, "e."+jsonNanos(time.Now().Add(-time.Hour)), old)
	// A purge, a roll-up and a deletion are refused by the stream.
	rollup := nats.NewMsg(topology.KeyPrefix + ".set.00000001")
	rollup.Header.Set("Nats-Rollup", "sub")
	rollup.Data = raw
	if _, err := f.js.PublishMsg(ctx, rollup); err == nil {
		t.Error("a roll-up of an entry was stored")
	}
	if err := f.stream.Purge(ctx); err == nil {
		t.Error("the key history was purged")
	}
	if err := f.stream.DeleteMsg(ctx, 1); err == nil {
		t.Error("an entry of the key history was deleted")
	}
	after, afterV := f.open(t)
	if err := after.Load(ctx); err != nil {
		t.Fatal(err)
	}
	// The next provisioned set goes under a key never used.
	key, _, err := operator.Append(ctx, f.entry("RS256", "ES256"))
	if err != nil || key != "set.00000003" {
		t.Fatalf("the next provisioned set: %q %v", key, err)
	}
	now := time.Now().Add(keyhistory.Margin + time.Second)
	for _, kid := range []string{"RS256", "ES256", "EdDSA", "PS256"} {
		for _, at := range []time.Time{time.Now().Add(-time.Minute), now} {
			b, a := f.judge(t, before, beforeV, kid, at), f.judge(t, after, afterV, kid, at)
			if !errors.Is(b, a) && !(b == nil && a == nil) {
				t.Errorf("a %s token at %s: %v on a worker that read the history before, %v on one that read it after", kid, at, b, a)
			}
		}
	}
	if err := f.judge(t, after, afterV, "PS256", time.Now().Add(-time.Minute)); !errors.Is(err, passkey.ErrAuthKeyUnknown) {
		t.Errorf("a set written now in the old form is in force in the past: %v", err)
	}
	if before.Sets() != 3 || after.Sets() != 3 {
		t.Errorf("%d and %d sets, want 3 on both", before.Sets(), after.Sets())
	}
}

// The version before kept the history in key-value bucket PASSKEYS_JWKS,
// written by the workers: `worker provision` makes its stream append-only
// in place, and the sets it holds keep judging the commands of their time.
func TestUpgradeFromTheKeyValueBucket(t *testing.T) {
	ns := testenv.StartNATS(t)
	js, err := jetstream.New(testenv.Connect(t, ns.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "PASSKEYS_JWKS", History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	keys := testenv.NewKeys(t)
	legacy, _ := json.Marshal(keys.PublicSet("EdDSA"))
	if _, err := kv.Create(ctx, "e.00000000000000000000", legacy); err != nil {
		t.Fatal(err)
	}
	st, err := js.CreateOrUpdateStream(ctx, topology.Settings{Replicas: 1}.KeyStreamConfig())
	if err != nil {
		t.Fatalf("making the bucket's stream append-only: %v", err)
	}
	if c := st.CachedInfo().Config; !c.DenyDelete || !c.DenyPurge || c.AllowRollup || c.MaxMsgsPerSubject != -1 {
		t.Fatalf("the key history's stream after the upgrade: %+v", c)
	}
	f := &fixture{js: js, stream: st, keys: keys}
	h, v := f.open(t)
	if err := h.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.judge(t, h, v, "EdDSA", time.Now()); err != nil {
		t.Fatalf("a token of the set the version before wrote: %v", err)
	}
	if key, _, err := h.Append(ctx, f.entry("ES256")); err != nil || key != "set.00000001" {
		t.Fatalf("the first provisioned set: %q %v", key, err)
	}
}
