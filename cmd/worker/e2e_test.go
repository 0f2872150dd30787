package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/passkeys/worker/event"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
)

const admin = "passkeys:admin"

func TestRequestReplyRemove(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	adminTok := e.token(t, "admin-1", admin)
	created := testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(false, "pk-1", "pk-2")))
	if got := created.Details; got.Sequence != "1" || got.ResourceOwner != "org1" || got.CreationDate != got.ChangeDate {
		t.Fatalf("sync details = %+v", got)
	}
	removed := testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", e.token(t, "u1"), `{"tokenId":"pk-1"}`))
	if got := removed.Details; got.Sequence != "2" || got.CreationDate != created.Details.CreationDate || got.ChangeDate <= got.CreationDate {
		t.Fatalf("remove details = %+v", got)
	}

	list := e.request(t, "passkeys.list.u1", e.token(t, "u1"), nil)
	var listed struct {
		Details struct{ TotalResult, ProcessedSequence, Timestamp string } `json:"details"`
		Result  []struct{ ID, Name, State string }                         `json:"result"`
	}
	if err := json.Unmarshal(list.Data, &listed); err != nil {
		t.Fatal(err)
	}
	if listed.Details.TotalResult != "1" || listed.Details.ProcessedSequence != "2" || listed.Details.Timestamp != removed.Details.ChangeDate ||
		len(listed.Result) != 1 || listed.Result[0].ID != "pk-2" || listed.Result[0].State != "AUTH_FACTOR_STATE_READY" {
		t.Fatalf("list = %s", list.Data)
	}

	// The last ready passkey stays: the user would have no way to log in.
	last := e.request(t, "passkeys.remove.u1", e.token(t, "u1"), `{"tokenId":"pk-2"}`)
	testenv.WantError(t, last, 9, "PASSKEY-LAST", "400")
	// A rejected command consumes no sequence number.
	forced := testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", adminTok, `{"tokenId":"pk-2","force":true}`))
	if forced.Details.Sequence != "3" {
		t.Fatalf("forced removal sequence = %s, want 3", forced.Details.Sequence)
	}
}

// A batch publisher writes to the stream itself, with Reply-To; changeDate is
// the command's JetStream timestamp.
func TestJetStreamPublishWithReplyTo(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", e.token(t, "a", admin), syncBody(true, "pk-1")))

	js, inbox, sub := e.streamClient(t)
	msg := nats.NewMsg("passkeys.cmd.remove.u1")
	msg.Header.Set("Authorization", e.token(t, "u1"))
	msg.Header.Set("Reply-To", inbox)
	msg.Header.Set("Content-Type", "application/json")
	msg.Data = []byte(`{"tokenId":"pk-1"}`)
	ack, err := js.PublishMsg(context.Background(), msg)
	if err != nil {
		t.Fatal(err)
	}
	reply, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := testenv.WantSuccess(t, reply)
	stored, err := js.Stream(context.Background(), "PASSKEYS")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := stored.GetMsg(context.Background(), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if want := event.Timestamp(raw.Time); got.Details.Sequence != "2" || got.Details.ChangeDate != want {
		t.Fatalf("details %+v, want sequence 2 and changeDate %s", got.Details, want)
	}

	// Without Reply-To the command is processed and nobody is answered.
	msg = nats.NewMsg("passkeys.cmd.sync.u2")
	msg.Header.Set("Authorization", e.token(t, "a", admin))
	msg.Data = encode(t, syncBody(true))
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		r := e.request(t, "passkeys.list.u2", e.token(t, "u2"), nil)
		return r.Header.Get("Nats-Service-Error-Code") == ""
	})
}

func waitFor(tb testing.TB, cond func() bool) {
	tb.Helper()
	waitWithin(tb, 10*time.Second, cond)
}

// waitWithin waits up to d for cond.
func waitWithin(tb testing.TB, d time.Duration, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(d); !cond(); {
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met in %s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestIdempotentRepeats(t *testing.T) {
	t.Parallel()
	// A short duplicate window, so the test can also repeat past it and see
	// the worker's own outcome records answer.
	e := newEnv(t, "--duplicate-window", "1s")
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", e.token(t, "a", admin), syncBody(true, "pk-1", "pk-2")))
	tok := e.token(t, "u1")

	first := e.request(t, "passkeys.remove.u1", tok, `{"tokenId":"pk-1"}`, "Nats-Msg-Id", "rm-1")
	testenv.WantSuccess(t, first)
	// Inside JetStream's window: the publish is a duplicate, the endpoint
	// answers with the stored outcome.
	again := e.request(t, "passkeys.remove.u1", tok, `{"tokenId":"pk-1"}`, "Nats-Msg-Id", "rm-1")
	if !bytes.Equal(first.Data, again.Data) {
		t.Fatalf("repeat inside the window:\n%s\n%s", first.Data, again.Data)
	}
	// An error outcome repeats byte for byte too, headers included.
	missing := e.request(t, "passkeys.remove.u1", tok, `{"tokenId":"pk-9"}`, "Nats-Msg-Id", "rm-2")
	testenv.WantError(t, missing, 5, "PASSKEY-NOT-FOUND", "404")
	missingAgain := e.request(t, "passkeys.remove.u1", tok, `{"tokenId":"pk-9"}`, "Nats-Msg-Id", "rm-2")
	testenv.WantError(t, missingAgain, 5, "PASSKEY-NOT-FOUND", "404")
	if !bytes.Equal(missing.Data, missingAgain.Data) {
		t.Fatalf("error repeat differs")
	}

	// Past the window JetStream stores the repeat; the worker's outcome record
	// answers it and changes nothing. Repeat until the stream has stored
	// one (the window has ended): every answer on the way is the first one.
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	stored := streamMsgs(t, js)
	waitFor(t, func() bool {
		late := e.request(t, "passkeys.remove.u1", tok, `{"tokenId":"pk-1"}`, "Nats-Msg-Id", "rm-1")
		if !bytes.Equal(first.Data, late.Data) {
			t.Fatalf("repeat:\n%s\n%s", first.Data, late.Data)
		}
		return streamMsgs(t, js) > stored
	})
	next := testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", tok, `{"tokenId":"pk-2"}`, "Nats-Msg-Id", "rm-3"))
	if next.Details.Sequence != "3" {
		t.Fatalf("sequence after repeats = %s, want 3 (repeats must change nothing)", next.Details.Sequence)
	}
	// The same Nats-Msg-Id on another user's subject: pinned where the
	// window cannot run out under the test (TestNATSPermissions: inside it,
	// REQUEST-MSGID-REUSED; command.TestMsgIDKeptPerUser: past it, the other
	// user's own command).
}

func TestSequenceAcrossRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	adminTok := e.token(t, "a", admin)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(true, "pk-1", "pk-2", "pk-3")))
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", adminTok, `{"tokenId":"pk-1"}`))
	e.w.stop(t)

	e.w = e.startWorker(t)
	got := testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", adminTok, `{"tokenId":"pk-2"}`))
	if got.Details.Sequence != "3" {
		t.Fatalf("sequence after restart = %s, want 3", got.Details.Sequence)
	}
	e.w.stop(t)

	stores, err := filepath.Glob(filepath.Join(e.dataDir, "partitions", "p*.db"))
	if err != nil || len(stores) != 8 {
		t.Fatalf("partition stores %v (%v), want 8", stores, err)
	}
	for _, f := range append(stores, filepath.Join(e.dataDir, "worker-id")) {
		info, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if mode := info.Mode().Perm(); mode != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, mode)
		}
	}
	for _, d := range []string{e.dataDir, filepath.Join(e.dataDir, "partitions")} {
		info, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if mode := info.Mode().Perm(); mode != 0o700 {
			t.Errorf("%s: mode %v, want 0700", d, mode)
		}
	}
	dir, err := os.Stat(e.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if mode := dir.Mode().Perm(); mode != 0o700 {
		t.Errorf("data directory mode %v, want 0700", mode)
	}
	if strings.Contains(e.w.log.String(), strings.TrimPrefix(adminTok, "Bearer ")) {
		t.Error("a token appears in the worker's log")
	}
}

func TestMicroServiceInfo(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reply, err := e.nc.Request("$SRV.INFO.passkeys", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(reply.Data, &info); err != nil {
		t.Fatal(err)
	}
	subjects := map[string]bool{}
	for _, ep := range info.Endpoints {
		subjects[ep.Subject] = true
	}
	if info.Name != "passkeys" || !subjects["passkeys.remove.*"] || !subjects["passkeys.sync.*"] || !subjects["passkeys.list.*"] {
		t.Fatalf("info = %s", reply.Data)
	}

	// STATS tell what callers were answered, not only that requests came in.
	adminTok := e.token(t, "a", admin)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(false, "pk-1")))
	testenv.WantError(t, e.request(t, "passkeys.remove.u1", adminTok, `{"tokenId":"pk-1"}`), 9, "PASSKEY-LAST", "400")
	reply, err = e.nc.Request("$SRV.STATS.passkeys", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var stats micro.Stats
	if err := json.Unmarshal(reply.Data, &stats); err != nil {
		t.Fatal(err)
	}
	data := map[string]string{}
	for _, ep := range stats.Endpoints {
		data[ep.Name] = string(ep.Data)
	}
	if !strings.Contains(data["sync"], `"answered":1,"errors":0`) ||
		!strings.Contains(data["remove"], `"answered":1,"errors":1,"last_error":"the passkey is the user's last way to log in (PASSKEY-LAST)"`) {
		t.Fatalf("STATS data: %v", data)
	}
}

// Every row of the contract's error table that a caller can cause, through
// the request-reply endpoints, with the code, the stable id and the header.
func TestErrorTable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	adminTok := e.token(t, "a", admin)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(false, "pk-1")))
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u3", adminTok, syncBody(true, "pk-1")))
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u3", adminTok, `{"tokenId":"pk-1"}`))
	self := e.token(t, "u1")
	mint := func(tok testenv.Token) string { return testenv.Bearer(e.keys.Mint(t, tok)) }
	other := testenv.NewKeys(t)
	bogus := testenv.Bearer(other.Mint(t, testenv.Token{Subject: "u1"}))
	hs256 := "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl"

	tests := []struct {
		name    string
		subject string
		auth    string
		body    any
		hdr     []string
		code    int
		id      string
		http    string
	}{
		{"NotJSON", "passkeys.remove.u1", self, `tokenId=pk-1`, nil, 3, "REQUEST-BODY-INVALID", "400"},
		{"UnknownContentType", "passkeys.remove.u1", self, `{"tokenId":"pk-1"}`, []string{"Content-Type", "text/plain"}, 3, "REQUEST-CONTENT-TYPE", "400"},
		{"TokenIDMissing", "passkeys.remove.u1", self, `{}`, nil, 3, "REQUEST-TOKENID-MISSING", "400"},
		{"TokenIDTooLong", "passkeys.remove.u1", self, `{"tokenId":"` + strings.Repeat("x", 201) + `"}`, nil, 3, "REQUEST-TOKENID-TOO-LONG", "400"},
		{"BadSubjectToken", "passkeys.remove." + strings.Repeat("u", 201), self, `{"tokenId":"pk-1"}`, nil, 3, "REQUEST-SUBJECT-INVALID", "400"},
		{"BodyOver64KiB", "passkeys.remove.u1", self, `{"tokenId":"pk-1"}` + strings.Repeat(" ", 64<<10), nil, 3, "REQUEST-BODY-TOO-LARGE", "400"},
		{"NoAuthorization", "passkeys.remove.u1", "", `{"tokenId":"pk-1"}`, nil, 16, "AUTH-MISSING", "401"},
		{"MalformedToken", "passkeys.remove.u1", "Bearer abc", `{"tokenId":"pk-1"}`, nil, 16, "AUTH-MALFORMED", "401"},
		{"BadSignature", "passkeys.remove.u1", bogus, `{"tokenId":"pk-1"}`, nil, 16, "AUTH-SIGNATURE", "401"},
		{"DisallowedAlgorithm", "passkeys.remove.u1", hs256, `{"tokenId":"pk-1"}`, nil, 16, "AUTH-ALGORITHM", "401"},
		{"WrongIssuer", "passkeys.remove.u1", mint(testenv.Token{Subject: "u1", Issuer: "https://evil.test"}), `{"tokenId":"pk-1"}`, nil, 16, "AUTH-ISSUER", "401"},
		{"WrongAudience", "passkeys.remove.u1", mint(testenv.Token{Subject: "u1", Audience: "other"}), `{"tokenId":"pk-1"}`, nil, 16, "AUTH-AUDIENCE", "401"},
		{"Expired", "passkeys.remove.u1", mint(testenv.Token{Subject: "u1", Now: time.Now().Add(-2 * time.Hour)}), `{"tokenId":"pk-1"}`, nil, 16, "AUTH-EXPIRED", "401"},
		{"NotYetValid", "passkeys.remove.u1", mint(testenv.Token{Subject: "u1", Now: time.Now().Add(time.Hour)}), `{"tokenId":"pk-1"}`, nil, 16, "AUTH-NOT-YET-VALID", "401"},
		{"OtherUser", "passkeys.remove.u1", e.token(t, "u2"), `{"tokenId":"pk-1"}`, nil, 7, "PERMISSION-USER", "403"},
		{"OtherUserUnknown", "passkeys.remove.nobody", e.token(t, "u2"), `{"tokenId":"pk-1"}`, nil, 7, "PERMISSION-USER", "403"},
		{"OtherOrgAdmin", "passkeys.remove.u1", mint(testenv.Token{Subject: "a2", Org: "org2", Scopes: []string{admin}}), `{"tokenId":"pk-1"}`, nil, 7, "PERMISSION-USER", "403"},
		{"ForceBySelf", "passkeys.remove.u1", self, `{"tokenId":"pk-1","force":true}`, nil, 7, "PERMISSION-FORCE", "403"},
		{"SyncBySelf", "passkeys.sync.u1", self, syncBody(true), nil, 7, "PERMISSION-SYNC", "403"},
		// An organisation administrator is not told whether a user outside
		// its organisation exists; only a system principal is.
		{"UnknownUser", "passkeys.remove.nobody", adminTok, `{"tokenId":"pk-1"}`, nil, 7, "PERMISSION-USER", "403"},
		{"UnknownUserForSystem", "passkeys.remove.nobody", e.token(t, "root", "passkeys:system"), `{"tokenId":"pk-1"}`, nil, 5, "USER-NOT-FOUND", "404"},
		{"OtherOrgUserSync", "passkeys.sync.u1", mint(testenv.Token{Subject: "a2", Org: "org2", Scopes: []string{admin}}), map[string]any{"resourceOwner": "org1"}, nil, 7, "PERMISSION-SYNC", "403"},
		{"UnknownUserSyncOtherOrg", "passkeys.sync.nobody", mint(testenv.Token{Subject: "a2", Org: "org2", Scopes: []string{admin}}), map[string]any{"resourceOwner": "org1"}, nil, 7, "PERMISSION-SYNC", "403"},
		{"UnknownPasskey", "passkeys.remove.u1", self, `{"tokenId":"pk-9"}`, nil, 5, "PASSKEY-NOT-FOUND", "404"},
		{"AlreadyRemoved", "passkeys.remove.u3", adminTok, `{"tokenId":"pk-1"}`, nil, 5, "PASSKEY-NOT-FOUND", "404"},
		{"LastLoginMethod", "passkeys.remove.u1", self, `{"tokenId":"pk-1"}`, nil, 9, "PASSKEY-LAST", "400"},
		{"ResourceOwnerChange", "passkeys.sync.u1", e.token(t, "root", "passkeys:system"), map[string]any{"resourceOwner": "org2"}, nil, 9, "USER-RESOURCEOWNER-IMMUTABLE", "400"},
		{"ListOtherUser", "passkeys.list.u1", e.token(t, "u2"), nil, nil, 7, "PERMISSION-USER", "403"},
		{"ListUnknown", "passkeys.list.nobody", adminTok, nil, nil, 7, "PERMISSION-USER", "403"},
		{"ListUnknownForSystem", "passkeys.list.nobody", e.token(t, "root", "passkeys:system"), nil, nil, 5, "USER-NOT-FOUND", "404"},
		{"ListNoAuthorization", "passkeys.list.u1", "", nil, nil, 16, "AUTH-MISSING", "401"},
		// Bad input of every kind a caller can send.
		{"EmptyBody", "passkeys.remove.u1", self, ``, nil, 3, "REQUEST-BODY-INVALID", "400"},
		{"WrongType", "passkeys.remove.u1", self, `{"tokenId":7}`, nil, 3, "REQUEST-BODY-INVALID", "400"},
		{"ForceWrongType", "passkeys.remove.u1", self, `{"tokenId":"pk-1","force":"yes"}`, nil, 3, "REQUEST-BODY-INVALID", "400"},
		{"UnknownField", "passkeys.remove.u1", self, `{"tokenId":"pk-1","reason":"x"}`, nil, 3, "REQUEST-BODY-INVALID", "400"},
		{"TokenIDEmpty", "passkeys.remove.u1", self, `{"tokenId":""}`, nil, 3, "REQUEST-TOKENID-MISSING", "400"},
		{"TokenIDControlCharacter", "passkeys.remove.u1", self, `{"tokenId":"pk\u0007"}`, nil, 3, "REQUEST-TOKENID-INVALID", "400"},
		{"Body64KiBPlus1", "passkeys.remove.u1", self, padTo(`{"tokenId":"pk-1"}`, 64<<10+1), nil, 3, "REQUEST-BODY-TOO-LARGE", "400"},
		{"Body64KiBExactly", "passkeys.remove.u1", self, padTo(`{"tokenId":"pk-9"}`, 64<<10), nil, 5, "PASSKEY-NOT-FOUND", "404"},
		{"UserIDWildcard", "passkeys.remove.*", self, `{"tokenId":"pk-1"}`, nil, 3, "REQUEST-SUBJECT-INVALID", "400"},
		{"TwoAuthorizations", "passkeys.remove.u1", self, `{"tokenId":"pk-1"}`, []string{"Authorization", self}, 16, "AUTH-MALFORMED", "401"},
		{"TwoContentTypes", "passkeys.remove.u1", self, `{"tokenId":"pk-1"}`, []string{"Content-Type", "application/json", "Content-Type", "application/json"}, 3, "REQUEST-CONTENT-TYPE", "400"},
		{"TwoMsgIDs", "passkeys.remove.u1", self, `{"tokenId":"pk-1"}`, []string{"Nats-Msg-Id", "a", "Nats-Msg-Id", "b"}, 3, "REQUEST-HEADER-INVALID", "400"},
		{"OversizedToken", "passkeys.remove.u1", "Bearer " + strings.Repeat("a", 9000), `{"tokenId":"pk-1"}`, nil, 16, "AUTH-MALFORMED", "401"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testenv.WantError(t, e.request(t, tt.subject, tt.auth, tt.body, tt.hdr...), tt.code, tt.id, tt.http)
		})
	}
	// And the worker goes on serving.
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(true, "pk-1")))
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", self, `{"tokenId":"pk-1"}`))
}

// padTo pads a JSON body with trailing spaces to exactly n bytes.
func padTo(body string, n int) string { return body + strings.Repeat(" ", n-len(body)) }

// Commands written to the stream directly can be wrong in ways the
// endpoints already refuse; the worker answers them the same way.
func TestStreamCommandErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	js, inbox, sub := e.streamClient(t)
	self := e.token(t, "u1")
	tests := []struct {
		name, subject string
		hdr           []string
		body          string
		code          int
		id, http      string
	}{
		{"UnknownOperation", "passkeys.cmd.erase.u1", nil, `{"tokenId":"pk-1"}`, 3, "REQUEST-SUBJECT-INVALID", "400"},
		{"BodyOver64KiB", "passkeys.cmd.remove.u1", nil, `{"tokenId":"pk-1"}` + strings.Repeat(" ", 64<<10), 3, "REQUEST-BODY-TOO-LARGE", "400"},
		{"TwoMsgIDs", "passkeys.cmd.remove.u1", []string{"Nats-Msg-Id", "a", "Nats-Msg-Id", "b"}, `{"tokenId":"pk-1"}`, 3, "REQUEST-HEADER-INVALID", "400"},
		{"TwoAuthorizations", "passkeys.cmd.remove.u1", []string{"Authorization", self}, `{"tokenId":"pk-1"}`, 16, "AUTH-MALFORMED", "401"},
		{"EmptyBody", "passkeys.cmd.remove.u1", nil, ``, 3, "REQUEST-BODY-INVALID", "400"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := nats.NewMsg(tt.subject)
			msg.Header.Set("Authorization", self)
			msg.Header.Set("Reply-To", inbox)
			for i := 0; i+1 < len(tt.hdr); i += 2 {
				msg.Header.Add(tt.hdr[i], tt.hdr[i+1])
			}
			msg.Data = []byte(tt.body)
			if _, err := js.PublishMsg(context.Background(), msg); err != nil {
				t.Fatal(err)
			}
			reply, err := sub.NextMsg(10 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			testenv.WantError(t, reply, tt.code, tt.id, tt.http)
		})
	}
	// The stream captures passkeys.cmd.<op>.<userId> only (the contract's
	// passkeys.cmd.*.*): a subject with more tokens is never stored, and
	// its publisher learns so at once.
	msg := nats.NewMsg("passkeys.cmd.remove.u1.x")
	msg.Header.Set("Authorization", self)
	msg.Data = []byte(`{"tokenId":"pk-1"}`)
	if _, err := js.PublishMsg(context.Background(), msg); !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Errorf("publish to a subject with an extra token: %v, want no stream", err)
	}
}

// A Reply-To in the system namespace would let any caller make the worker
// publish to the JetStream API; it is refused and nothing is published there.
func TestReplyToIsConfined(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	adminTok := e.token(t, "a", admin)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(true, "pk-1")))
	msg := nats.NewMsg("passkeys.cmd.remove.u1")
	msg.Header.Set("Authorization", adminTok)
	msg.Header.Set("Reply-To", "$JS.API.STREAM.PURGE.PASSKEYS")
	// Scoped to the administrator, as the publisher scopes its ids, so that
	// the endpoint finds it.
	msg.Header.Set("Nats-Msg-Id", passkey.ScopeMsgID(testenv.Issuer, "a", "hostile"))
	msg.Data = []byte(`{"tokenId":"pk-1"}`)
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	// The same Nats-Msg-Id through the endpoint returns the stored outcome.
	reply := e.request(t, "passkeys.remove.u1", adminTok, `{"tokenId":"pk-1"}`, "Nats-Msg-Id", "hostile")
	testenv.WantError(t, reply, 3, "REQUEST-HEADER-INVALID", "400")
	if n := streamMsgs(t, js); n < 2 {
		t.Fatalf("stream holds %d messages: it was purged", n)
	}
	list := e.request(t, "passkeys.list.u1", adminTok, nil)
	if !strings.Contains(string(list.Data), "pk-1") {
		t.Fatalf("passkey removed despite the refused command: %s", list.Data)
	}
}

// streamMsgs is how many commands stream PASSKEYS holds.
func streamMsgs(tb testing.TB, js jetstream.JetStream) uint64 {
	tb.Helper()
	stream, err := js.Stream(context.Background(), "PASSKEYS")
	if err != nil {
		tb.Fatal(err)
	}
	info, err := stream.Info(context.Background(), jetstream.WithSubjectFilter(partition.ControlSubjects))
	if err != nil {
		tb.Fatal(err)
	}
	controls := uint64(0)
	for _, n := range info.State.Subjects {
		controls += n
	}
	return info.State.Msgs - controls // the commands: the control entries aside
}

// streamLen is how many messages stream name holds.
func streamLen(tb testing.TB, js jetstream.JetStream, name string) uint64 {
	tb.Helper()
	stream, err := js.Stream(context.Background(), name)
	if err != nil {
		tb.Fatal(err)
	}
	info, err := stream.Info(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return info.State.Msgs
}

// The request-reply endpoints answer only reply subjects a Reply-To may
// name: a request whose reply subject is a command subject, the JetStream
// API or a dead-letter subject is dropped, not answered there (the worker's
// connection may write to all three).
func TestEndpointReplySubjectIsConfined(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	adminTok := e.token(t, "a", admin)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(true, "pk-1")))
	before := streamMsgs(t, js)
	for _, c := range []struct{ subject, reply string }{
		{"passkeys.list.u1", "passkeys.cmd.remove.u1"},
		{"passkeys.list.u1", "passkeys.dlq.1"},
		{"passkeys.remove.u1", "$JS.API.STREAM.PURGE.PASSKEYS"},
		{"passkeys.sync.u1", "passkeys.cmd.sync.u2"},
		{"passkeys.admin.replay", "$JS.API.STREAM.PURGE.PASSKEYS"},
	} {
		msg := nats.NewMsg(c.subject)
		msg.Reply = c.reply
		msg.Header.Set("Authorization", adminTok)
		msg.Data = []byte(`{"tokenId":"pk-1"}`)
		if err := e.nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	// A request sent after them is answered, so they were handled by now.
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u3", adminTok, syncBody(true, "pk-1")))
	if got := streamMsgs(t, js); got != before+1 {
		t.Fatalf("stream holds %d commands, want %d: a reply subject reached the stream or the API", got, before+1)
	}
	if !strings.Contains(e.w.log.String(), "request dropped") {
		t.Error("no log line for the dropped requests")
	}
}

// The forwarding endpoints verify the token before anything is stored: an
// unauthenticated request is answered at once and never enters the stream,
// so it cannot occupy a Nats-Msg-Id. Ids through the endpoints are scoped to
// the principal, so an administrator's later command under the same id is
// its own command and is applied.
func TestEndpointStoresOnlyAuthenticatedCommands(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	adminTok := e.token(t, "a", admin)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u2", adminTok, syncBody(true, "pk-1", "pk-2")))
	before := streamMsgs(t, js)
	testenv.WantError(t, e.request(t, "passkeys.remove.u2", "", `{"tokenId":"pk-1"}`, "Nats-Msg-Id", "revoke:incident:2"), 16, "AUTH-MISSING", "401")
	testenv.WantError(t, e.request(t, "passkeys.remove.u2", "Bearer x.y.z", `{"tokenId":"pk-1"}`, "Nats-Msg-Id", "revoke:incident:2"), 16, "AUTH-MALFORMED", "401")
	// Another principal with a valid token: stored under its own scope.
	testenv.WantError(t, e.request(t, "passkeys.remove.u2", e.token(t, "u9"), `{"tokenId":"pk-1"}`, "Nats-Msg-Id", "revoke:incident:2"), 7, "PERMISSION-USER", "403")
	if got := streamMsgs(t, js); got != before+1 {
		t.Fatalf("stream holds %d commands, want %d: an unauthenticated request was stored", got, before+1)
	}
	// The administrator's command under the same id, straight into the
	// stream, is applied.
	reply := streamRequest(t, e.nc, "passkeys.cmd.remove.u2", adminTok, "revoke:incident:2", `{"tokenId":"pk-1"}`)
	if got := testenv.WantSuccess(t, reply); got.Details.Sequence != "2" {
		t.Fatalf("administrator's removal: sequence %s, want 2", got.Details.Sequence)
	}
	// A Nats-Msg-Id past the bound is refused at the endpoint.
	testenv.WantError(t, e.request(t, "passkeys.remove.u2", adminTok, `{"tokenId":"pk-2"}`, "Nats-Msg-Id", strings.Repeat("k", 300)), 3, "REQUEST-HEADER-INVALID", "400")
}

// Keys rotate without a restart, as an operator rotates them: `worker
// provision --jwks` writes the new set into every partition, and the worker
// refuses tokens of a removed key and accepts tokens of an added one once it
// has read the set. The worker's own --jwks file does not change what it
// trusts: a file that differs from the newest set is a warning and a metric,
// and a file that does not load changes nothing.
func TestJWKSRotation(t *testing.T) {
	t.Parallel()
	addr := testenv.FreeAddr(t)
	e := newEnv(t, "--jwks-reload-interval", "50ms", "--http-listen", addr)
	mint := func(kid, sub string, scopes ...string) string {
		org := ""
		if len(scopes) > 0 {
			org = "org1"
		}
		return testenv.Bearer(e.keys.Mint(t, testenv.Token{Kid: kid, Subject: sub, Org: org, Scopes: scopes}))
	}
	waitID := func(auth, id string) {
		t.Helper()
		waitFor(t, func() bool {
			r := e.request(t, "passkeys.list.u1", auth, nil)
			if id == "" {
				return r.Header.Get("Nats-Service-Error-Code") == ""
			}
			return strings.Contains(string(r.Data), `"id":"`+id+`"`)
		})
	}
	e.keys.WriteJWKS(t, "EdDSA", "ES256")
	provision(t, e.url, e.keys.JWKSPath)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", mint("EdDSA", "a", admin), syncBody(true, "pk-1", "pk-2")))
	waitID(mint("RS256", "u1"), "AUTH-KEY-UNKNOWN")
	waitID(mint("ES256", "u1"), "")

	// ES256 rotated out, RS256 in.
	e.keys.WriteJWKS(t, "EdDSA", "RS256")
	provision(t, e.url, e.keys.JWKSPath)
	waitID(mint("ES256", "u1"), "AUTH-KEY-UNKNOWN")
	waitID(mint("RS256", "u1"), "")
	testenv.WantError(t, e.request(t, "passkeys.remove.u1", mint("ES256", "u1"), `{"tokenId":"pk-1"}`), 16, "AUTH-KEY-UNKNOWN", "401")
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", mint("RS256", "u1"), `{"tokenId":"pk-1"}`))

	// The worker's own file changes: it says so, and trusts the history.
	metric := func() string {
		_, text := httpGet(t, addr, "/metrics")
		return text
	}
	// The file and the set agree once the worker has read both (it polls
	// each): waited for, not assumed at once.
	waitFor(t, func() bool { return strings.Contains(metric(), "passkeys_jwks_file_differs 0\n") })
	e.keys.WriteJWKS(t, "EdDSA")
	waitFor(t, func() bool { return strings.Contains(metric(), "passkeys_jwks_file_differs 1\n") })
	if !strings.Contains(e.w.log.String(), `"differs":true`) {
		t.Errorf("no warning that the worker's file differs from the newest key set")
	}
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", mint("RS256", "u1"), `{"tokenId":"pk-2"}`, "Nats-Msg-Id", "still-trusted"))

	// A broken file: the keys in force stay.
	if err := os.WriteFile(e.keys.JWKSPath, []byte(`{"keys":[`), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(e.w.log.String(), "JWKS not reloaded") })
	waitID(mint("RS256", "u1"), "")
}

// /metrics counts what the worker does; /healthz answers while it runs;
// /readyz only while it is connected and its stream, consumer and store are there.
func TestMetricsAndHealth(t *testing.T) {
	t.Parallel()
	addr := testenv.FreeAddr(t)
	ns := testenv.StartNATS(t)
	e := &env{url: ns.ClientURL(), keys: testenv.NewKeys(t), dataDir: filepath.Join(t.TempDir(), "data")}
	e.nc = testenv.Connect(t, e.url)
	e.w = e.startWorker(t, "--http-listen", addr)
	get := func(path string) (int, string) { t.Helper(); return httpGet(t, addr, path) }
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Fatalf("/readyz %d %s", code, body)
	}

	adminTok := e.token(t, "a", admin)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(false, "pk-1", "pk-2")))
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", adminTok, `{"tokenId":"pk-1"}`, "Nats-Msg-Id", "m1"))
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", adminTok, `{"tokenId":"pk-1"}`, "Nats-Msg-Id", "m1")) // a repeat
	testenv.WantError(t, e.request(t, "passkeys.remove.u1", adminTok, `{"tokenId":"pk-2"}`), 9, "PASSKEY-LAST", "400")

	// A command is acknowledged right after its reply.
	var text string
	waitFor(t, func() bool {
		_, text = get("/metrics")
		return strings.Contains(text, "passkeys_consumer_ack_pending 0\n")
	})
	for _, want := range []string{
		`passkeys_commands_total{code="OK",op="sync"} 1`,
		`passkeys_commands_total{code="OK",op="remove"} 1`,
		`passkeys_commands_total{code="FAILED_PRECONDITION",op="remove"} 1`,
		`passkeys_command_latency_seconds_count 3`,
		`passkeys_outcome_records 3`,
		`passkeys_consumer_pending 0`,
		`passkeys_consumer_ack_pending 0`,
		`passkeys_tokens_cached 1`,
		`passkeys_redeliveries_total 0`,
		`passkeys_replies_early_total 0`,
		`passkeys_events_written_total 2`, // the sync and the removal; not the repeat or the refusal
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !regexp.MustCompile(`(?m)^passkeys_batch_size_count [1-9]`).MatchString(text) ||
		!regexp.MustCompile(`(?m)^passkeys_commit_duration_seconds_count [1-9]`).MatchString(text) {
		t.Errorf("/metrics has no batch or commit observations")
	}
	for _, line := range strings.Split(text, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "passkeys_") {
			t.Errorf("metric %q does not begin with passkeys_", line)
			break
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", text)
	}
	// The repeat through the endpoint was answered from the store by the
	// service, not the consumer: the consumer saw three commands.

	ns.Shutdown()
	waitFor(t, func() bool { code, _ := get("/readyz"); return code == 503 })
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d while NATS is down", code)
	}
}

// passkeys.admin.replay: for the passkeys:system scope only; a replay of
// applied commands changes nothing.
func TestReplayEndpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	adminTok := e.token(t, "a", admin)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(true, "pk-1", "pk-2")))
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", adminTok, `{"tokenId":"pk-1"}`))
	system := e.token(t, "root", "passkeys:system")

	testenv.WantError(t, e.request(t, "passkeys.admin.replay", adminTok, `{"fromSeq":1,"toSeq":2}`), 7, "PERMISSION-REPLAY", "403")
	for _, body := range []string{`{"fromSeq":2,"toSeq":1}`, `{"fromSeq":1,"toSeq":2}x`, `{"fromSeq":1,"toSeq":2} {}`,
		`{"FROMSEQ":1,"toSeq":2}`, `{"fromSeq":1,"toSeq":2,"toSeq":9}`} {
		testenv.WantError(t, e.request(t, "passkeys.admin.replay", system, body), 3, "REQUEST-REPLAY-INVALID", "400")
	}
	testenv.WantError(t, e.request(t, "passkeys.admin.replay", "", `{"fromSeq":1,"toSeq":2}`), 16, "AUTH-MISSING", "401")
	reply := e.request(t, "passkeys.admin.replay", system, `{"fromSeq":1,"toSeq":100}`)
	if got, want := string(reply.Data), `{"fromSeq":1,"toSeq":10,"read":2,"repeats":2,"applied":0,"refused":0,"failed":0,"partitions":[0,1,2,3,4,5,6,7]}`; got != want {
		t.Fatalf("replay: %s, want %s", got, want)
	}
	got := testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", adminTok, `{"tokenId":"pk-2"}`))
	if got.Details.Sequence != "3" {
		t.Fatalf("sequence after the replay %s, want 3", got.Details.Sequence)
	}
}

// The stream and the consumer are what the contract says; with
// --create-stream=false the worker makes neither and says what is missing.
func TestStreamAndConsumerSetUp(t *testing.T) {
	t.Parallel()
	e := newEnvTimed(t, false) // the production defaults, which the other tests shorten
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	stream, err := js.Stream(ctx, "PASSKEYS")
	if err != nil {
		t.Fatal(err)
	}
	sc := stream.CachedInfo().Config
	if !slices.Equal(sc.Subjects, []string{"passkeys.cmd.*.*", "passkeys.part.*.control"}) || !sc.AllowMsgTTL || sc.Storage != jetstream.FileStorage || sc.Retention != jetstream.LimitsPolicy ||
		sc.SubjectTransform == nil || sc.SubjectTransform.Destination != "passkeys.part.{{partition(8,2)}}.{{wildcard(1)}}.{{wildcard(2)}}" ||
		sc.Metadata["passkeys.partitions"] != "8" {
		t.Errorf("stream config: subjects %v, storage %v, retention %v, transform %+v, metadata %v", sc.Subjects, sc.Storage, sc.Retention, sc.SubjectTransform, sc.Metadata)
	}
	for p := range 8 {
		cons, err := js.Consumer(ctx, "PASSKEYS", fmt.Sprintf("passkeys-worker-p%03d", p))
		if err != nil {
			t.Fatal(err)
		}
		cc := cons.CachedInfo().Config
		// The README's settings: explicit ack, ack wait 10 s, no MaxDeliver
		// (a command is never given up on), no BackOff, pinned to one
		// worker at a time, unpinned 5 s after it stops pulling.
		if cc.AckPolicy != jetstream.AckExplicitPolicy || cc.MaxDeliver != -1 || cc.AckWait != 10*time.Second || len(cc.BackOff) != 0 ||
			cc.FilterSubject != fmt.Sprintf("passkeys.part.%d.>", p) || cc.PriorityPolicy != jetstream.PriorityPolicyPinned ||
			cc.PinnedTTL != 5*time.Second || len(cc.PriorityGroups) != 1 || cc.PriorityGroups[0] != "passkeys" {
			t.Errorf("consumer config: %+v", cc)
		}
	}

	// The count is fixed with the stream: another one is refused, clearly.
	err = run(ctx, []string{"--nats-url", e.url, "--jwks", e.keys.JWKSPath, "--issuer", testenv.Issuer,
		"--audience", testenv.Audience, "--data-dir", t.TempDir(), "--partitions", "4"}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "split into 8 partitions, but this worker was started with --partitions 4") {
		t.Fatalf("a worker with another partition count: %v", err)
	}

	bare := testenv.StartNATS(t)
	err = run(ctx, []string{"--nats-url", bare.ClientURL(), "--jwks", e.keys.JWKSPath, "--issuer", testenv.Issuer,
		"--audience", testenv.Audience, "--data-dir", t.TempDir(), "--create-stream=false"}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "stream PASSKEYS: nats: API error: code=404 err_code=10059 description=stream not found (run `worker provision` first)") {
		t.Fatalf("--create-stream=false on a server without them: %v", err)
	}
}
