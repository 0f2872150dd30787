package storage

import (
	"reflect"
	"testing"
	"time"

	"github.com/passkeys/worker/internal/binrec"
	"github.com/passkeys/worker/passkey"
)

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
	o := &Outcome{Subject: "passkeys.cmd.remove.u1", Fingerprint: []byte("0123456789abcdef"), Reply: []byte{2, 9, 1, 'x'},
		Expires: time.Date(2026, 12, 4, 10, 0, 0, 1, time.UTC)}
	got, err := decodeOutcome(encodeOutcome(o))
	if err != nil || !reflect.DeepEqual(got, o) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
}

// Records written before fingerprints were kept still read: their
// fingerprint is nil, and repeats compare them by subject alone.
func TestOutcomeCodecReadsV1(t *testing.T) {
	at := time.Date(2026, 12, 4, 10, 0, 0, 1, time.UTC)
	v1 := binrec.AppendString(binrec.AppendTime([]byte{outcomeRecordV1}, at), "passkeys.cmd.remove.u1")
	v1 = append(v1, 2, 9, 1, 'x')
	got, err := decodeOutcome(v1)
	want := &Outcome{Subject: "passkeys.cmd.remove.u1", Reply: []byte{2, 9, 1, 'x'}, Expires: at}
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
	out := encodeOutcome(&Outcome{Subject: "s"})
	for n := range len(out) { // a record whose reply is empty still has its header
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
