package passkey

import (
	"strings"
	"testing"
)

func wantID(tb testing.TB, err error, code Code, id string) {
	tb.Helper()
	if id == "" {
		if err != nil {
			tb.Fatalf("err = %v, want none", err)
		}
		return
	}
	e, ok := err.(*Error)
	if !ok {
		tb.Fatalf("err = %v, want %s", err, id)
	}
	if got, want := e.ID, id; got != want {
		tb.Errorf("id = %s, want %s (%s)", got, want, e.Message)
	}
	if got, want := e.Code, code; got != want {
		tb.Errorf("code = %d, want %d", got, want)
	}
}

func TestDecodeRemove(t *testing.T) {
	tests := []struct {
		name string
		body string
		id   string
	}{
		{"Valid", `{"tokenId":"pk-1"}`, ""},
		{"ValidForce", `{"tokenId":"pk-1","force":true}`, ""},
		{"Empty", ``, IDBodyInvalid},
		{"NotJSON", `tokenId=pk-1`, IDBodyInvalid},
		{"Array", `["pk-1"]`, IDBodyInvalid},
		{"WrongType", `{"tokenId":7}`, IDBodyInvalid},
		{"ForceWrongType", `{"tokenId":"pk","force":"yes"}`, IDBodyInvalid},
		{"UnknownField", `{"tokenId":"pk-1","extra":1}`, IDBodyInvalid},
		{"Trailing", `{"tokenId":"pk-1"} {}`, IDBodyInvalid},
		{"Truncated", `{"tokenId":"pk-1"`, IDBodyInvalid},
		{"MissingTokenID", `{}`, IDTokenIDMissing},
		{"EmptyTokenID", `{"tokenId":""}`, IDTokenIDMissing},
		{"TokenID200", `{"tokenId":"` + strings.Repeat("é", 200) + `"}`, ""},
		{"TokenID201", `{"tokenId":"` + strings.Repeat("a", 201) + `"}`, IDTokenIDTooLong},
		{"ControlChar", `{"tokenId":"pk\u0001"}`, IDTokenIDInvalid},
		{"TooLarge", `{"tokenId":"pk-1","force":false}` + strings.Repeat(" ", MaxBodySize), IDBodyTooLarge},
		// Exact keys only, each once: encoding/json alone matches any case
		// and keeps the last of two.
		{"KeyInOtherCase", `{"TOKENID":"pk-1"}`, IDBodyInvalid},
		{"ForceInOtherCase", `{"tokenId":"pk-1","Force":true}`, IDBodyInvalid},
		{"DuplicateKey", `{"tokenId":"pk-1","tokenId":"pk-2"}`, IDBodyInvalid},
		{"DuplicateForce", `{"tokenId":"pk-1","force":false,"force":true}`, IDBodyInvalid},
		{"TrailingGarbage", `{"tokenId":"pk-1"}x`, IDBodyInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeRemove([]byte(tt.body))
			wantID(t, err, CodeInvalidArgument, tt.id)
		})
	}
}

func TestDecodeSync(t *testing.T) {
	tests := []struct {
		name string
		body string
		id   string
	}{
		{"Valid", `{"resourceOwner":"o","password":true,"idpLinks":["g"],"passkeys":[{"id":"pk-1","name":"Y","state":"ready"}],"u2f":["x"],"otp":true}`, ""},
		{"Minimal", `{"resourceOwner":"o"}`, ""},
		{"NoOwner", `{"password":true}`, IDSyncInvalid},
		{"BadState", `{"resourceOwner":"o","passkeys":[{"id":"pk-1","state":"READY"}]}`, IDSyncInvalid},
		{"DuplicatePasskey", `{"resourceOwner":"o","passkeys":[{"id":"a","state":"ready"},{"id":"a","state":"ready"}]}`, IDSyncInvalid},
		{"EmptyPasskeyID", `{"resourceOwner":"o","passkeys":[{"id":"","state":"ready"}]}`, IDSyncInvalid},
		{"EmptyIdP", `{"resourceOwner":"o","idpLinks":[""]}`, IDSyncInvalid},
		{"UnknownField", `{"resourceOwner":"o","email":"x"}`, IDBodyInvalid},
		{"NestedKeyInOtherCase", `{"resourceOwner":"o","passkeys":[{"ID":"pk-1","state":"ready"}]}`, IDBodyInvalid},
		{"NestedDuplicateKey", `{"resourceOwner":"o","passkeys":[{"id":"pk-1","id":"pk-2","state":"ready"}]}`, IDBodyInvalid},
		{"DuplicateOwner", `{"resourceOwner":"o","resourceOwner":"p"}`, IDBodyInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeSync([]byte(tt.body))
			wantID(t, err, CodeInvalidArgument, tt.id)
		})
	}
}

func TestParseSubject(t *testing.T) {
	tests := []struct {
		name, subject string
		op            Op
		user, id      string
	}{
		{"Remove", "passkeys.cmd.remove.u1", OpRemove, "u1", ""},
		{"Sync", "passkeys.cmd.sync.69629023906488334", OpSync, "69629023906488334", ""},
		{"Longest", "passkeys.cmd.remove." + strings.Repeat("u", 200), OpRemove, strings.Repeat("u", 200), ""},
		{"TooLong", "passkeys.cmd.remove." + strings.Repeat("u", 201), "", "", IDSubjectInvalid},
		{"ExtraToken", "passkeys.cmd.remove.u1.x", "", "", IDSubjectInvalid},
		{"Wildcard", "passkeys.cmd.remove.*", "", "", IDSubjectInvalid},
		{"FullWildcard", "passkeys.cmd.remove.>", "", "", IDSubjectInvalid},
		{"Space", "passkeys.cmd.remove.u 1", "", "", IDSubjectInvalid},
		{"Empty", "passkeys.cmd.remove.", "", "", IDSubjectInvalid},
		{"NoUser", "passkeys.cmd.remove", "", "", IDSubjectInvalid},
		{"UnknownOp", "passkeys.cmd.delete.u1", "", "", IDSubjectInvalid},
		{"WrongPrefix", "other.cmd.remove.u1", "", "", IDSubjectInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op, user, err := ParseSubject("passkeys.cmd", tt.subject)
			wantID(t, err, CodeInvalidArgument, tt.id)
			if op != tt.op || user != tt.user {
				t.Errorf("got %q %q, want %q %q", op, user, tt.op, tt.user)
			}
		})
	}
}

func TestValidateContentType(t *testing.T) {
	for _, tt := range []struct {
		name   string
		values []string
		id     string
	}{
		{"Absent", nil, ""},
		{"JSON", []string{"application/json"}, ""},
		{"JSONCharset", []string{"application/json; charset=utf-8"}, ""},
		{"Text", []string{"text/plain"}, IDContentType},
		{"Twice", []string{"application/json", "application/json"}, IDContentType},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantID(t, ValidateContentType(tt.values), CodeInvalidArgument, tt.id)
		})
	}
}

// An unknown field's name is quoted by a short prefix only: the message
// travels in the reply, its header, the stored outcome and the log.
func TestUnknownFieldNameIsShortened(t *testing.T) {
	long := strings.Repeat("n", 30<<10)
	for name, body := range map[string]string{
		"Unknown":   `{"tokenId":"pk-1","` + long + `":1}`,
		"Duplicate": `{"tokenId":"pk-1","` + long + `":1,"` + long + `":1}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeRemove([]byte(body))
			wantID(t, err, CodeInvalidArgument, IDBodyInvalid)
			if msg := err.Error(); len(msg) > 200 {
				t.Fatalf("message of %d bytes: %.100s...", len(msg), msg)
			}
		})
	}
}
