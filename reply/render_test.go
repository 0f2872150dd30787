package reply

import (
	"strconv"
	"testing"
	"time"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/event"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
)

// Replies and events write times alike, as proto3 JSON writes a
// google.protobuf.Timestamp.
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
		if got := event.Timestamp(base.Add(time.Duration(tt.ns)).In(time.FixedZone("X", 3600))); got != tt.want {
			t.Errorf("Timestamp(+%dns) = %s, want %s", tt.ns, got, tt.want)
		}
	}
}

func TestErrorReplyShape(t *testing.T) {
	r := Error(passkey.ErrPasskeyLast)
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
