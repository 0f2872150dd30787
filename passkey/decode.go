package passkey

import (
	"encoding/json"
	"errors"
	"mime"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxBodySize is the largest command body accepted, in bytes.
const MaxBodySize = 64 << 10

// maxIDLen bounds a user id (in bytes, as a subject token) and a passkey id
// (in characters), per the contract.
const maxIDLen = 200

// Op is what a command asks for.
type Op string

// The operations, as their subject token spells them.
const (
	OpRemove Op = "remove"
	OpSync   Op = "sync"
	OpList   Op = "list"
)

// ValidateUserID checks that id can be a <userId> subject token: 1 to 200
// bytes, no '.', '*', '>', white space or control character.
//
// Errors: INVALID_ARGUMENT (REQUEST-SUBJECT-INVALID).
func ValidateUserID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return Errorf(CodeInvalidArgument, IDSubjectInvalid, "the user id in the subject must be 1 to %d bytes", maxIDLen)
	}
	for _, r := range id {
		if r == '.' || r == '*' || r == '>' || unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError {
			return Errorf(CodeInvalidArgument, IDSubjectInvalid, "the user id in the subject contains a character a subject token cannot hold")
		}
	}
	return nil
}

// ParseSubject splits "<prefix>.<op>.<userId>" into the operation and the
// user id. prefix is "passkeys.cmd" for stored commands and "passkeys" for
// the request-reply endpoints.
//
// Errors: INVALID_ARGUMENT (REQUEST-SUBJECT-INVALID).
func ParseSubject(prefix, subject string) (Op, string, error) {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	op, userID, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 {
		return "", "", Errorf(CodeInvalidArgument, IDSubjectInvalid, "the subject must be %s.<operation>.<userId>", prefix)
	}
	switch Op(op) {
	case OpRemove, OpSync, OpList:
	default:
		return "", "", Errorf(CodeInvalidArgument, IDSubjectInvalid, "unknown operation in the subject")
	}
	if err := ValidateUserID(userID); err != nil {
		return "", "", err
	}
	return Op(op), userID, nil
}

// ValidateContentType accepts no Content-Type at all or application/json
// (with any parameters, such as a charset).
//
// Errors: INVALID_ARGUMENT (REQUEST-CONTENT-TYPE).
func ValidateContentType(values []string) error {
	switch len(values) {
	case 0:
		return nil
	case 1:
		mt, _, err := mime.ParseMediaType(values[0])
		if err == nil && mt == "application/json" {
			return nil
		}
	}
	return Errorf(CodeInvalidArgument, IDContentType, "the Content-Type must be application/json")
}

// DecodeRemove parses and checks a remove body.
//
// Errors: INVALID_ARGUMENT (REQUEST-BODY-TOO-LARGE, REQUEST-BODY-INVALID,
// REQUEST-TOKENID-MISSING, REQUEST-TOKENID-TOO-LONG, REQUEST-TOKENID-INVALID).
func DecodeRemove(body []byte) (RemoveRequest, error) {
	var req RemoveRequest
	if err := decodeStrict(body, &req); err != nil {
		return req, err
	}
	if req.TokenID == "" {
		return req, Errorf(CodeInvalidArgument, IDTokenIDMissing, "tokenId is required")
	}
	if utf8.RuneCountInString(req.TokenID) > maxIDLen {
		return req, Errorf(CodeInvalidArgument, IDTokenIDTooLong, "tokenId must be at most %d characters", maxIDLen)
	}
	if !printable(req.TokenID) {
		return req, Errorf(CodeInvalidArgument, IDTokenIDInvalid, "tokenId must not contain control characters")
	}
	return req, nil
}

// DecodeSync parses and checks a sync body.
//
// Errors: INVALID_ARGUMENT (REQUEST-BODY-TOO-LARGE, REQUEST-BODY-INVALID,
// REQUEST-SYNC-INVALID).
func DecodeSync(body []byte) (SyncRequest, error) {
	var req SyncRequest
	if err := decodeStrict(body, &req); err != nil {
		return req, err
	}
	invalid := func(format string, args ...any) (SyncRequest, error) {
		return req, Errorf(CodeInvalidArgument, IDSyncInvalid, format, args...)
	}
	if !validID(req.ResourceOwner) {
		return invalid("resourceOwner must be 1 to %d printable characters", maxIDLen)
	}
	seen := make(map[string]bool, len(req.Passkeys))
	for i, pk := range req.Passkeys {
		if !validID(pk.ID) {
			return invalid("passkeys[%d].id must be 1 to %d printable characters", i, maxIDLen)
		}
		if seen[pk.ID] {
			return invalid("passkeys[%d].id repeats an earlier passkey id", i)
		}
		seen[pk.ID] = true
		if utf8.RuneCountInString(pk.Name) > maxIDLen || !printable(pk.Name) {
			return invalid("passkeys[%d].name must be at most %d printable characters", i, maxIDLen)
		}
		if pk.State != StateReady && pk.State != StateNotReady {
			return invalid("passkeys[%d].state must be %q or %q", i, StateReady, StateNotReady)
		}
	}
	for i, id := range req.IDPLinks {
		if !validID(id) {
			return invalid("idpLinks[%d] must be 1 to %d printable characters", i, maxIDLen)
		}
	}
	for i, id := range req.U2F {
		if !validID(id) {
			return invalid("u2f[%d] must be 1 to %d printable characters", i, maxIDLen)
		}
	}
	return req, nil
}

// decodeStrict decodes one JSON object into v (DecodeStrict), after
// checking the body's size.
func decodeStrict(body []byte, v any) error {
	if len(body) > MaxBodySize {
		return ErrBodyTooLarge
	}
	return DecodeStrict(body, v)
}

// describeJSONError names what was wrong without echoing the caller's data.
func describeJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return "field " + typeErr.Field + " has the wrong type"
	case errors.As(err, &syntaxErr):
		return "malformed JSON"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name, uerr := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		if uerr != nil {
			return "unknown field"
		}
		return "unknown field " + quoteShort(name)
	default:
		return "malformed JSON"
	}
}

func validID(s string) bool {
	return s != "" && utf8.RuneCountInString(s) <= maxIDLen && printable(s)
}

func printable(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}
