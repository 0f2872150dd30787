package storage

import (
	"encoding/hex"
	"reflect"
	"testing"
	"time"

	"github.com/passkeys/worker/internal/binrec"
	"github.com/passkeys/worker/passkey"
)

// decodeAnswer reads an answer record, which must end raw.
func decodeAnswer(raw []byte) (passkey.Answer, error) {
	r := binrec.NewReader(raw)
	a := readAnswer(r)
	return a, r.Done()
}

func sampleUser() *passkey.User {
	at := time.Date(2026, 11, 27, 10, 0, 0, 123456789, time.UTC)
	return &passkey.User{
		ID: "69629023906488334", ResourceOwner: "org-é", Sequence: 300, CreationDate: at, ChangeDate: at.Add(time.Hour),
		Password: true, OTP: true, IDPLinks: []string{"google-oidc", "github"},
		Passkeys: []passkey.Passkey{{ID: "pk-1", Name: "YubiKey 5", State: passkey.StateReady}, {ID: "pk-2", State: passkey.StateNotReady}},
		U2F:      []string{"u2f-1"},
	}
}

func TestUserCodecRoundTrip(t *testing.T) {
	for name, u := range map[string]*passkey.User{
		"Full":  sampleUser(),
		"Empty": {ID: "u", ResourceOwner: "o", CreationDate: time.Unix(0, 0).UTC(), ChangeDate: time.Unix(0, 0).UTC()},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := decodeUser(encodeUser(u))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, u) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, u)
			}
		})
	}
}

func TestOutcomeCodecRoundTrip(t *testing.T) {
	for _, a := range []passkey.Answer{passkey.Refused(passkey.ErrPasskeyLast), passkey.Changed(sampleUser())} {
		o := &Outcome{Subject: "passkeys.cmd.remove.u1", Fingerprint: []byte("0123456789abcdef"), Answer: a,
			Expires: time.Date(2026, 12, 4, 10, 0, 0, 1, time.UTC)}
		got, err := decodeOutcome(encodeOutcome(o))
		if err != nil || !reflect.DeepEqual(got, o) {
			t.Fatalf("round trip: %+v, %v", got, err)
		}
	}
}

// An answer's record bytes are pinned: outcomes written by earlier versions
// (these bytes are what f814a73 wrote) must decode to the same answer for
// as long as they are kept, or a repeat would get other bytes.
func TestAnswerRecordBytes(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 123456789, time.UTC)
	for _, tt := range []struct {
		answer passkey.Answer
		hex    string
	}{
		{passkey.Answer{Sequence: 300, CreationDate: at, ChangeDate: at.Add(time.Hour), ResourceOwner: "org-é"},
			"01ac02aab490c6e5a4efeb31aab4d5d1abf6f0eb31066f72672dc3a9"},
		{passkey.Refused(passkey.ErrPasskeyLast),
			"02090c504153534b45592d4c4153542c74686520706173736b65792069732074686520757365722773206c6173742077617920746f206c6f6720696e"},
	} {
		if got := hex.EncodeToString(appendAnswer(nil, tt.answer)); got != tt.hex {
			t.Errorf("answer %+v: record %s, want %s", tt.answer, got, tt.hex)
		}
		raw, _ := hex.DecodeString(tt.hex)
		if got, err := decodeAnswer(raw); err != nil || !reflect.DeepEqual(got, tt.answer) {
			t.Errorf("record %s: %+v, %v", tt.hex, got, err)
		}
	}
}

// Records written before fingerprints were kept still read: their
// fingerprint is nil, and repeats compare them by subject alone.
func TestOutcomeCodecReadsV1(t *testing.T) {
	at := time.Date(2026, 12, 4, 10, 0, 0, 1, time.UTC)
	v1 := binrec.AppendString(binrec.AppendTime([]byte{outcomeRecordV1}, at), "passkeys.cmd.remove.u1")
	v1 = appendAnswer(v1, passkey.Refused(passkey.ErrPasskeyLast))
	got, err := decodeOutcome(v1)
	want := &Outcome{Subject: "passkeys.cmd.remove.u1", Answer: passkey.Refused(passkey.ErrPasskeyLast), Expires: at}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("v1 record: %+v, %v; want %+v", got, err, want)
	}
	if !outcomeExpired(v1, at) || outcomeExpired(v1, at.Add(-time.Nanosecond)) {
		t.Fatal("v1 record's expiry misread")
	}
}

// Every truncation of a valid record is refused, not misread or panicked on.
func TestCodecRefusesTruncated(t *testing.T) {
	raw := encodeUser(sampleUser())
	for n := range len(raw) {
		if _, err := decodeUser(raw[:n]); err == nil {
			t.Errorf("decoded a user record cut at %d of %d bytes", n, len(raw))
		}
	}
	if _, err := decodeUser(append(raw, 0)); err == nil {
		t.Error("decoded a user record with a trailing byte")
	}
	out := encodeOutcome(&Outcome{Subject: "s", Answer: passkey.Refused(passkey.ErrPasskeyLast)})
	for n := range len(out) {
		if _, err := decodeOutcome(out[:n]); err == nil {
			t.Errorf("decoded an outcome record cut at %d of %d bytes", n, len(out))
		}
	}
}

func FuzzDecodeUser(f *testing.F) {
	f.Add(encodeUser(sampleUser()))
	f.Add([]byte{userRecordV1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, raw []byte) {
		u, err := decodeUser(raw)
		if err != nil {
			return
		}
		// What decodes must survive a round trip unchanged.
		again, err := decodeUser(encodeUser(u))
		if err != nil || !reflect.DeepEqual(again, u) {
			t.Fatalf("round trip of a decoded record: %+v, %v; want %+v", again, err, u)
		}
	})
}

// Whatever bytes an answer record holds (a damaged page, an old version),
// decodeAnswer refuses them or reads an answer that survives being written
// and read again: a repeat's reply is a function of its record, never a
// panic.
func FuzzDecodeAnswer(f *testing.F) {
	f.Add(appendAnswer(nil, passkey.Changed(sampleUser())))
	f.Add(appendAnswer(nil, passkey.Refused(passkey.ErrPasskeyLast)))
	f.Add([]byte{answerErrorV1, 9, 200})
	f.Fuzz(func(t *testing.T, raw []byte) {
		a, err := decodeAnswer(raw)
		if err != nil {
			return
		}
		again, err := decodeAnswer(appendAnswer(nil, a))
		if err != nil || !reflect.DeepEqual(again, a) {
			t.Fatalf("record %x read as %+v, written and read again as %+v (%v)", raw, a, again, err)
		}
	})
}
