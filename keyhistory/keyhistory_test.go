package keyhistory_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

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
	js   jetstream.JetStream
	kv   jetstream.KeyValue
	keys *testenv.Keys
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ns := testenv.StartNATS(t)
	js, err := jetstream.New(testenv.Connect(t, ns.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(context.Background(), topology.Settings{Replicas: 1}.KeyBucketConfig())
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{js: js, kv: kv, keys: testenv.NewKeys(t)}
}

// open is one worker's view, with the verifier it feeds.
func (f *fixture) open(t *testing.T) (*keyhistory.History, *auth.Verifier) {
	t.Helper()
	v, err := auth.NewVerifier(f.keys.PublicSet("RS256"), testenv.Issuer, testenv.Audience)
	if err != nil {
		t.Fatal(err)
	}
	h, err := keyhistory.Open(context.Background(), f.js, f.kv, v, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return h, v
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
	e, err := f.kv.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if want := e.Created().Add(keyhistory.Margin); !from.Equal(want) {
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
	if _, err := f.kv.Create(ctx, "e.00000000000000000000", legacy); err != nil {
		t.Fatal(err)
	}
	retired := time.Now().Add(-time.Hour)
	newer, _ := json.Marshal(f.keys.PublicSet("ES256"))
	if _, err := f.kv.Create(ctx, "e."+jsonNanos(retired), newer); err != nil {
		t.Fatal(err)
	}
	if _, err := f.kv.Create(ctx, "set.00000001", []byte(`{"issuer":"x","audience":"y","jwks":{"keys":"not keys"}}`)); err != nil {
		t.Fatal(err)
	}
	h, v := f.open(t)
	if err := h.Load(ctx); err != nil {
		t.Fatalf("a history with a bad entry: %v", err)
	}
	if h.Sets() != 2 {
		t.Fatalf("%d sets, want the 2 of the version before", h.Sets())
	}
	if err := f.judge(t, h, v, "EdDSA", retired.Add(-time.Minute)); err != nil {
		t.Errorf("a command before the old rotation, by the old set: %v", err)
	}
	if err := f.judge(t, h, v, "EdDSA", time.Now()); !errors.Is(err, passkey.ErrAuthKeyUnknown) {
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
