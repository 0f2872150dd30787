package passkey

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// Decoders must never panic, and must only ever answer INVALID_ARGUMENT;
// what they accept must satisfy the contract's limits.
func FuzzDecodeRemove(f *testing.F) {
	for _, seed := range []string{`{"tokenId":"pk-1"}`, `{"tokenId":"pk-1","force":true}`, `{}`, ``, `[]`, `{"tokenId":7}`,
		`{"tokenId":"a"} x`, `{"tokenId":"\u0000"}`, `{"tokenId":"` + strings.Repeat("é", 201) + `"}`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := DecodeRemove(body)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeInvalidArgument {
				t.Fatalf("error %v is not INVALID_ARGUMENT", err)
			}
			return
		}
		if n := utf8.RuneCountInString(req.TokenID); n < 1 || n > maxIDLen || !printable(req.TokenID) {
			t.Fatalf("accepted tokenId %q", req.TokenID)
		}
	})
}

func FuzzDecodeSync(f *testing.F) {
	for _, seed := range []string{`{"resourceOwner":"o","password":true,"idpLinks":["g"],"passkeys":[{"id":"pk-1","name":"Y","state":"ready"}],"u2f":["x"],"otp":true}`,
		`{"resourceOwner":"o","passkeys":[{"id":"a","state":"ready"},{"id":"a","state":"not_ready"}]}`, `{"resourceOwner":""}`, `null`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := DecodeSync(body)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeInvalidArgument {
				t.Fatalf("error %v is not INVALID_ARGUMENT", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, pk := range req.Passkeys {
			if !validID(pk.ID) || seen[pk.ID] || (pk.State != StateReady && pk.State != StateNotReady) {
				t.Fatalf("accepted passkey %+v", pk)
			}
			seen[pk.ID] = true
		}
		if !validID(req.ResourceOwner) {
			t.Fatalf("accepted resourceOwner %q", req.ResourceOwner)
		}
	})
}

func FuzzParseSubject(f *testing.F) {
	for _, seed := range []string{"passkeys.cmd.remove.u1", "passkeys.cmd.sync.u1", "passkeys.cmd.remove.u1.x", "passkeys.cmd.remove.*",
		"passkeys.cmd.remove.>", "passkeys.cmd.remove. ", "passkeys.cmd..u1", "passkeys.cmd.remove.\x00", "passkeys.cmd.list.u1"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, subject string) {
		op, user, err := ParseSubject("passkeys.cmd", subject)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.ID != IDSubjectInvalid {
				t.Fatalf("error %v is not %s", err, IDSubjectInvalid)
			}
			return
		}
		if subject != "passkeys.cmd."+string(op)+"."+user {
			t.Fatalf("%q parsed as %q %q", subject, op, user)
		}
		if len(user) < 1 || len(user) > maxIDLen || strings.ContainsAny(user, ".*> \t\r\n") {
			t.Fatalf("accepted user id %q", user)
		}
	})
}
