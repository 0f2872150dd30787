package handler

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
)

// consumerFixture is a Consumer reading a real stream on an in-process
// NATS server, with the dead-letter stream in place.
type consumerFixture struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	cons  jetstream.Consumer
	keys  *testenv.Keys
	inbox string
	sub   *nats.Subscription
}

func startConsumer(t *testing.T, keys *testenv.Keys, proc *command.Applier, maxDeliver int) *consumerFixture {
	t.Helper()
	f := newConsumerFixture(t, keys, maxDeliver)
	f.run(t, proc, maxDeliver)
	return f
}

// newConsumerFixture sets up the streams, the consumer and the reply inbox;
// run starts the Consumer.
func newConsumerFixture(t *testing.T, keys *testenv.Keys, maxDeliver int) *consumerFixture {
	t.Helper()
	ns := testenv.StartNATS(t)
	f := &consumerFixture{nc: testenv.Connect(t, ns.ClientURL()), keys: keys}
	var err error
	if f.js, err = jetstream.New(f.nc); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := EnsureStream(ctx, f.js, StreamConfig(time.Hour, time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureStream(ctx, f.js, DeadLetterStreamConfig()); err != nil {
		t.Fatal(err)
	}
	if f.cons, err = EnsureConsumer(ctx, f.js, ConsumerConfig(maxDeliver, 100, DefaultAckWait)); err != nil {
		t.Fatal(err)
	}
	f.inbox = nats.NewInbox()
	if f.sub, err = f.nc.SubscribeSync(f.inbox + ".*"); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *consumerFixture) run(t *testing.T, proc *command.Applier, maxDeliver int) {
	t.Helper()
	ctx := context.Background()
	c := &Consumer{
		Applier: proc, Conn: f.nc, Log: zerolog.Nop(), MaxBatch: 8, MaxDeliver: maxDeliver,
		Redelivery:  retry.Policy{First: 10 * time.Millisecond, Factor: 1, Max: 10 * time.Millisecond},
		DeadLetters: f.js,
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx, f.cons) }()
	t.Cleanup(func() { stop(); <-done })
}

// send publishes a command to the stream with Reply-To <inbox>.<name>.
func (f *consumerFixture) send(t *testing.T, subject, sub, name, body string, scopes ...string) {
	t.Helper()
	msg := nats.NewMsg(subject)
	org := ""
	if len(scopes) > 0 {
		org = "org1"
	}
	msg.Header.Set(command.HeaderAuthorization, testenv.Bearer(f.keys.Mint(t, testenv.Token{Subject: sub, Org: org, Scopes: scopes})))
	msg.Header.Set(command.HeaderReplyTo, f.inbox+"."+name)
	msg.Header.Set(command.HeaderMsgID, "id-"+name)
	msg.Data = []byte(body)
	if _, err := f.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// replies waits for n replies and files them by name.
func (f *consumerFixture) replies(t *testing.T, n int) map[string][]*nats.Msg {
	t.Helper()
	got := map[string][]*nats.Msg{}
	for range n {
		m, err := f.sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("waiting for reply %d of %d: %v", len(got)+1, n, err)
		}
		name := m.Subject[len(f.inbox)+1:]
		got[name] = append(got[name], m)
	}
	if extra, err := f.sub.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("an unexpected reply on %s: %s", extra.Subject, extra.Data)
	}
	return got
}

func (f *consumerFixture) settled(t *testing.T) {
	t.Helper()
	info, err := f.cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 0 || info.NumPending != 0 {
		t.Fatalf("consumer not settled: ack pending %d, pending %d", info.NumAckPending, info.NumPending)
	}
}

// A command whose store keeps failing is nacked and retried; on its last
// delivery it gets one INTERNAL reply and is terminated.
func TestRetriesExhausted(t *testing.T) {
	keys := testenv.NewKeys(t)
	store := testenv.MustOpenStore(t)
	store.Close() // every transaction now fails, as on a broken disk
	proc := &command.Applier{Store: store, Verifier: keys.Verifier(t), Retention: time.Hour, Now: time.Now, Log: zerolog.Nop()}
	f := startConsumer(t, keys, proc, 2)
	f.send(t, "passkeys.cmd.remove.u1", "u1", "rm", `{"tokenId":"pk-1"}`)
	got := f.replies(t, 1)
	testenv.WantError(t, got["rm"][0], 13, passkey.IDRetriesExhausted, "500")
	f.settled(t)
}

// A command whose handling panics is retried with backoff while the worker
// goes on serving others; after MaxDeliver it gets one INTERNAL reply, is
// terminated, and is recorded in PASSKEYS_DLQ without its token.
func TestPoisonCommand(t *testing.T) {
	keys := testenv.NewKeys(t)
	proc := &command.Applier{Store: testenv.MustOpenStore(t), Verifier: keys.Verifier(t), Retention: time.Hour, Now: time.Now, Log: zerolog.Nop()}
	proc.BeforeDecide = func(c *command.Command) {
		if c.Subject == "passkeys.cmd.remove.poison" {
			panic("poison")
		}
	}
	f := startConsumer(t, keys, proc, 3)
	f.send(t, "passkeys.cmd.sync.healthy", "a", "sync", `{"resourceOwner":"org1","password":true,"passkeys":[{"id":"pk-1","state":"ready"}]}`, "passkeys:admin")
	f.send(t, "passkeys.cmd.remove.poison", "poison", "poison", `{"tokenId":"pk-1"}`)
	f.send(t, "passkeys.cmd.remove.healthy", "healthy", "healthy", `{"tokenId":"pk-1"}`)
	got := f.replies(t, 3)
	testenv.WantSuccess(t, got["sync"][0])
	testenv.WantSuccess(t, got["healthy"][0])
	if len(got["poison"]) != 1 {
		t.Fatalf("poison got %d replies", len(got["poison"]))
	}
	testenv.WantError(t, got["poison"][0], 13, passkey.IDRetriesExhausted, "500")
	f.settled(t)

	dlq, err := f.js.Stream(context.Background(), DeadLetterStreamName)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := dlq.GetLastMsgForSubject(context.Background(), DeadLetterPrefix+".>")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		HeaderDLQSubject: "passkeys.cmd.remove.poison", HeaderDLQStreamSeq: "2", HeaderDLQDelivered: "3",
		HeaderDLQMsgID: "id-poison", HeaderDLQReplyTo: f.inbox + ".poison",
	} {
		if got := rec.Header.Get(name); got != want {
			t.Errorf("dead letter %s = %q, want %q", name, got, want)
		}
	}
	if reason := rec.Header.Get(HeaderDLQReason); !strings.Contains(reason, "poison") || !strings.Contains(reason, "3 deliveries") {
		t.Errorf("dead letter reason %q", reason)
	}
	if string(rec.Data) != `{"tokenId":"pk-1"}` {
		t.Errorf("dead letter body %s", rec.Data)
	}
	for name := range rec.Header {
		if strings.EqualFold(name, command.HeaderAuthorization) {
			t.Errorf("the dead letter keeps the bearer token")
		}
	}
}

// A command that breaks every commit it is part of fails alone: the
// commands batched with it are applied and answered, and only it ends with
// the final INTERNAL reply.
func TestBreakingCommandFailsAlone(t *testing.T) {
	keys := testenv.NewKeys(t)
	proc := &command.Applier{Store: testenv.MustOpenStore(t), Verifier: keys.Verifier(t), Retention: time.Hour, Now: time.Now, Log: zerolog.Nop()}
	proc.BreakTx = func(c *command.Command) error {
		if c.Subject == "passkeys.cmd.sync.bad" {
			return errors.New("this command breaks the commit")
		}
		return nil
	}
	f := newConsumerFixture(t, keys, 2)
	body := `{"resourceOwner":"org1","password":true}`
	names := []string{"u1", "u2", "bad", "u3", "u4", "u5"}
	for _, n := range names { // all stored before the consumer runs: one batch
		f.send(t, "passkeys.cmd.sync."+n, "a", n, body, "passkeys:admin")
	}
	f.run(t, proc, 2)
	got := f.replies(t, len(names))
	for _, n := range names {
		if n == "bad" {
			testenv.WantError(t, got[n][0], 13, passkey.IDRetriesExhausted, "500")
			continue
		}
		testenv.WantSuccess(t, got[n][0])
	}
	f.settled(t)
}

// A forwarding endpoint that cannot store the command answers UNAVAILABLE at once.
func TestForwardUnavailable(t *testing.T) {
	ns := testenv.StartNATS(t) // no PASSKEYS stream: JetStream has nowhere to store
	nc := testenv.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	keys := testenv.NewKeys(t)
	svc, err := (&Service{JS: js, Store: testenv.MustOpenStore(t), Verifier: keys.Verifier(t), Log: zerolog.Nop(), Now: time.Now, OutcomeWait: time.Second}).Start(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	msg := nats.NewMsg("passkeys.remove.u1")
	msg.Header.Set(command.HeaderAuthorization, testenv.Bearer(keys.Mint(t, testenv.Token{Subject: "u1"})))
	msg.Data = []byte(`{"tokenId":"pk-1"}`)
	reply, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WantError(t, reply, 14, passkey.IDStreamUnavailable, "503")
}

func TestTimestamp(t *testing.T) {
	base := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		ns   int
		want string
	}{
		{0, "2026-11-27T10:00:00Z"},
		{123000000, "2026-11-27T10:00:00.123Z"},
		{123456000, "2026-11-27T10:00:00.123456Z"},
		{123456789, "2026-11-27T10:00:00.123456789Z"},
		{1, "2026-11-27T10:00:00.000000001Z"},
	} {
		if got := Timestamp(base.Add(time.Duration(tt.ns)).In(time.FixedZone("X", 3600))); got != tt.want {
			t.Errorf("Timestamp(+%dns) = %s, want %s", tt.ns, got, tt.want)
		}
	}
}

func TestErrorReplyShape(t *testing.T) {
	r := ErrorReply(passkey.ErrPasskeyLast)
	want := `{"code":9,"message":"the passkey is the user's last way to log in (PASSKEY-LAST)","details":[{"@type":"type.googleapis.com/zitadel.v1.ErrorDetail","id":"PASSKEY-LAST","message":"the passkey is the user's last way to log in"}]}`
	if string(r.Body) != want {
		t.Errorf("body\n got %s\nwant %s", r.Body, want)
	}
	if r.ErrorCode != "400" || r.ErrorText != "the passkey is the user's last way to log in (PASSKEY-LAST)" {
		t.Errorf("headers %q %q", r.ErrorCode, r.ErrorText)
	}
}

// The bytes of a success reply are pinned: a repeat rebuilds them from the
// stored record, so a change here would change old commands' replies.
func TestSuccessReplyShape(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 123456000, time.UTC)
	r := Render(passkey.Changed(&passkey.User{Sequence: 3, CreationDate: at, ChangeDate: time.Date(2026, 11, 27, 10, 5, 0, 654321000, time.UTC), ResourceOwner: "69629023906488334"}))
	want := `{"details":{"sequence":"3","creationDate":"2026-11-27T10:00:00.123456Z","changeDate":"2026-11-27T10:05:00.654321Z","resourceOwner":"69629023906488334"}}`
	if string(r.Body) != want {
		t.Errorf("body\n got %s\nwant %s", r.Body, want)
	}
	if r.IsError() || r.Header() != nil {
		t.Errorf("a success reply carries error headers")
	}
}

// A reply rebuilt from its record is the reply, byte for byte.
// A repeat's reply is rendered from the answer the store kept: after a
// round trip through a real store (times in another zone, nanoseconds,
// non-ASCII, a 40-bit sequence) it is the first reply, byte for byte,
// headers included.
func TestRepeatRendersTheFirstReply(t *testing.T) {
	store := testenv.MustOpenStore(t)
	at := time.Date(2026, 11, 27, 11, 0, 0, 123456789, time.FixedZone("CET", 3600))
	answers := []passkey.Answer{
		passkey.Changed(&passkey.User{Sequence: 1, CreationDate: at, ChangeDate: at, ResourceOwner: "o"}),
		passkey.Changed(&passkey.User{Sequence: 1 << 40, CreationDate: at, ChangeDate: at.Add(time.Hour + 1), ResourceOwner: "org-é"}),
		passkey.Refused(passkey.ErrPasskeyLast),
		passkey.Refused(passkey.Errorf(passkey.CodeInvalidArgument, passkey.IDSyncInvalid, "passkeys[%d].state must be %q", 3, "ready")),
	}
	for i, a := range answers {
		key := command.MsgIDKey("k" + strconv.Itoa(i))
		err := store.Update(func(tx *storage.Tx) error {
			return tx.PutOutcome("u1", key, &storage.Outcome{Subject: "passkeys.cmd.remove.u1", Answer: a, Expires: at.Add(time.Hour)})
		})
		if err != nil {
			t.Fatal(err)
		}
		var kept *storage.Outcome
		if err := store.View(func(tx *storage.Tx) (err error) { kept, err = tx.Outcome("u1", key); return err }); err != nil || kept == nil {
			t.Fatalf("answer %d: outcome %v, %v", i, kept, err)
		}
		first, again := Render(a), Render(kept.Answer)
		if string(first.Body) != string(again.Body) || first.ErrorCode != again.ErrorCode || first.ErrorText != again.ErrorText {
			t.Errorf("answer %d: first reply %s %q, repeat %s %q", i, first.Body, first.ErrorText, again.Body, again.ErrorText)
		}
		if (a.Err != nil) != first.IsError() {
			t.Errorf("answer %d: error reply %v", i, first.IsError())
		}
	}
}

// A command that failed until it was terminated has no outcome; a replay of
// its range applies it now, and changes nothing for the commands around it.
func TestReplayAppliesWhatFailed(t *testing.T) {
	keys := testenv.NewKeys(t)
	proc := &command.Applier{Store: testenv.MustOpenStore(t), Verifier: keys.Verifier(t), Retention: time.Hour, Now: time.Now, Log: zerolog.Nop()}
	broken := true
	proc.BeforeDecide = func(c *command.Command) {
		if broken && c.Subject == "passkeys.cmd.remove.u1" {
			panic("a bug, since fixed")
		}
	}
	f := startConsumer(t, keys, proc, 2)
	f.send(t, "passkeys.cmd.sync.u1", "a", "sync", `{"resourceOwner":"org1","password":true,"passkeys":[{"id":"pk-1","state":"ready"}]}`, "passkeys:admin")
	f.send(t, "passkeys.cmd.remove.u1", "u1", "rm", `{"tokenId":"pk-1"}`)
	got := f.replies(t, 2)
	testenv.WantError(t, got["rm"][0], 13, passkey.IDRetriesExhausted, "500")
	f.settled(t)

	broken = false
	rep, err := Replay(context.Background(), f.js, proc, command.ReplayRange{FromSeq: 1, ToSeq: 2}, 8, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := (command.ReplayReport{FromSeq: 1, ToSeq: 2, Read: 2, Repeats: 1, Applied: 1}); rep != want {
		t.Fatalf("replay report %+v, want %+v", rep, want)
	}
	again, err := Replay(context.Background(), f.js, proc, command.ReplayRange{FromSeq: 1, ToSeq: 2, UserID: "u1"}, 8, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := (command.ReplayReport{FromSeq: 1, ToSeq: 2, Read: 2, Repeats: 2}); again != want {
		t.Fatalf("second replay %+v, want %+v", again, want)
	}
	err = proc.Store.View(func(tx *storage.Tx) error {
		u, err := tx.User("u1")
		if err != nil {
			return err
		}
		if u.Sequence != 2 || len(u.Passkeys) != 0 {
			t.Errorf("user after replays: sequence %d, passkeys %v", u.Sequence, u.Passkeys)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// One retry schedule: the consumer has no BackOff (the server would offset
// every nak's delay by it), and the worker naks after 1 s, 2 s, 4 s, 8 s
// (retry.Redelivery), so a command that keeps failing gets its final answer
// on its fifth delivery, within about 20 s.
func TestRetrySchedule(t *testing.T) {
	cfg := ConsumerConfig(DefaultMaxDeliver, DefaultMaxAckPending, DefaultAckWait)
	if len(cfg.BackOff) != 0 || cfg.AckWait != 10*time.Second || cfg.MaxDeliver != 5 || cfg.AckPolicy != jetstream.AckExplicitPolicy {
		t.Fatalf("consumer: BackOff %v, AckWait %s, MaxDeliver %d, AckPolicy %v", cfg.BackOff, cfg.AckWait, cfg.MaxDeliver, cfg.AckPolicy)
	}
	var total time.Duration
	for d := uint64(1); d < uint64(cfg.MaxDeliver); d++ {
		total += retry.Redelivery.After(d)
	}
	if total != 15*time.Second {
		t.Errorf("a poison command waits %s in all for its final answer, want 15 s", total)
	}
}

// The contract's error table: each gRPC code with the HTTP status
// grpc-gateway gives it, and the name the metrics label it with.
func TestStatus(t *testing.T) {
	for code, want := range map[passkey.Code]struct {
		http int
		name string
	}{
		0: {200, "OK"}, passkey.CodeInvalidArgument: {400, "INVALID_ARGUMENT"}, passkey.CodeUnauthenticated: {401, "UNAUTHENTICATED"},
		passkey.CodePermissionDenied: {403, "PERMISSION_DENIED"}, passkey.CodeNotFound: {404, "NOT_FOUND"},
		passkey.CodeFailedPrecondition: {400, "FAILED_PRECONDITION"}, passkey.CodeInternal: {500, "INTERNAL"},
		passkey.CodeUnavailable: {503, "UNAVAILABLE"},
	} {
		if http, name := Status(code); http != want.http || name != want.name {
			t.Errorf("code %d: %d %s, want %d %s", code, http, name, want.http, want.name)
		}
	}
}
