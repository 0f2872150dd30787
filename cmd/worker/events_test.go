package main

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
)

// Every applied change gives exactly one CloudEvent on passkeys.events.<userId>,
// with the contract's fields and Nats-Msg-Id equal to its id; a refusal and
// a repeat give none.
func TestRemovalEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	adminTok := e.token(t, "a", admin)
	synced := testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(true, "pk-1", "pk-2")))
	removed := testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", e.token(t, "u1"), `{"tokenId":"pk-1"}`, "Nats-Msg-Id", "rm-42"))
	// A repeat and a refusal change nothing, and say nothing.
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", e.token(t, "u1"), `{"tokenId":"pk-1"}`, "Nats-Msg-Id", "rm-42"))
	testenv.WantError(t, e.request(t, "passkeys.remove.u1", e.token(t, "u2"), `{"tokenId":"pk-2"}`), 7, "PERMISSION-USER", "403")
	forced := testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", adminTok, `{"tokenId":"pk-2","force":true}`))

	events := readEvents(t, js, 3) // a user's events come in order: the last change's is the third
	type doc struct {
		SpecVersion, ID, Source, Type, Subject, Time, DataContentType string
		Data                                                          map[string]any
	}
	var got []doc
	for _, m := range events {
		var d doc
		if err := json.Unmarshal(m.Data(), &d); err != nil {
			t.Fatalf("event %s: %v", m.Data(), err)
		}
		if m.Subject() != "passkeys.events.u1" || m.Headers().Get("Nats-Msg-Id") != d.ID || m.Headers().Get("Content-Type") != "application/cloudevents+json" {
			t.Errorf("event %s on %s, headers %v", d.ID, m.Subject(), m.Headers())
		}
		got = append(got, d)
	}
	want := []doc{
		{"1.0", "u1:1", "passkeys", "passkeys.user.synced", "u1", synced.Details.ChangeDate, "application/json", map[string]any{
			"userId": "u1", "resourceOwner": "org1", "actor": map[string]any{"sub": "a", "role": "admin"}, "sequence": "1",
			"created": true, "passkeys": 2.0, "firstFactors": 3.0}},
		{"1.0", "u1:2", "passkeys", "user.human.passwordless.token.removed", "u1", removed.Details.ChangeDate, "application/json", map[string]any{
			"userId": "u1", "resourceOwner": "org1", "tokenId": "pk-1", "name": "key pk-1", "forced": false,
			"actor": map[string]any{"sub": "u1", "role": "self"}, "sequence": "2",
			"remaining": map[string]any{"passkeys": 1.0, "firstFactors": 2.0}, "msgId": "rm-42"}},
		{"1.0", "u1:3", "passkeys", "user.human.passwordless.token.removed", "u1", forced.Details.ChangeDate, "application/json", map[string]any{
			"userId": "u1", "resourceOwner": "org1", "tokenId": "pk-2", "name": "key pk-2", "forced": true,
			"actor": map[string]any{"sub": "a", "role": "admin"}, "sequence": "3",
			"remaining": map[string]any{"passkeys": 0.0, "firstFactors": 1.0}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events:\n%+v\nwant\n%+v", got, want)
	}
	for _, m := range events {
		if strings.Contains(string(m.Data()), "eyJ") { // a JWT's header, base64 of `{"`
			t.Errorf("event %s holds a token", m.Data())
		}
	}
}

// readEvents reads the first n events of stream PASSKEYS_EVENTS, waiting
// for them, and fails if the stream holds more.
func readEvents(tb testing.TB, js jetstream.JetStream, n int) []jetstream.Msg {
	tb.Helper()
	ctx := context.Background()
	stream, err := js.Stream(ctx, "PASSKEYS_EVENTS")
	if err != nil {
		tb.Fatal(err)
	}
	waitFor(tb, func() bool {
		info, err := stream.Info(ctx)
		return err == nil && info.State.Msgs >= uint64(n)
	})
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	batch, err := cons.FetchNoWait(n + 1)
	if err != nil {
		tb.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != n {
		tb.Fatalf("stream PASSKEYS_EVENTS holds %d events, want %d", len(msgs), n)
	}
	return msgs
}

// A worker killed between a change's commit and its event's publication
// (stream PASSKEYS_EVENTS is deleted under it, so its events stay in the
// outbox) publishes the events after its restart, once.
func TestEventSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills a worker process")
	}
	bin := buildWorker(t)
	ns := testenv.StartNATS(t)
	e := &env{url: ns.ClientURL(), keys: testenv.NewKeys(t), dataDir: t.TempDir()}
	e.nc = testenv.Connect(t, e.url)
	proc := e.startProcess(t, bin)
	waitFor(t, func() bool {
		_, err := e.nc.Request("$SRV.PING.passkeys", nil, 200*time.Millisecond)
		return err == nil
	})
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(context.Background(), "PASSKEYS_EVENTS"); err != nil {
		t.Fatal(err)
	}
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", e.token(t, "a", admin), syncBody(true, "pk-1", "pk-2")))
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", e.token(t, "u1"), `{"tokenId":"pk-1"}`))
	if _, err := js.Stream(context.Background(), "PASSKEYS_EVENTS"); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("stream PASSKEYS_EVENTS: %v, want it still deleted (nothing published meanwhile)", err)
	}
	if err := proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = proc.cmd.Wait()
	e.startProcess(t, bin)
	waitFor(t, func() bool { // the restarted worker made the stream again
		_, err := js.Stream(context.Background(), "PASSKEYS_EVENTS")
		return err == nil
	})
	msgs := readEvents(t, js, 2)
	for i, want := range []string{"u1:1", "u1:2"} {
		if got := msgs[i].Headers().Get("Nats-Msg-Id"); got != want {
			t.Fatalf("event %d is %s, want %s", i, got, want)
		}
	}
}
