package passkey

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"strings"
)

// MaxMsgIDLen bounds a Nats-Msg-Id as a caller gives it. The id becomes part
// of a store key and of log lines; bbolt refuses keys over 32 KiB, which
// would fail every command committed with it.
const MaxMsgIDLen = 256

// scopePrefixLen is the length of the prefix ScopeMsgID puts before an id:
// "~", 22 characters of base64url and ":".
const scopePrefixLen = 24

// MaxScopedMsgIDLen bounds a Nats-Msg-Id as it is stored in the stream: a
// caller's id, with its principal's scope in front when it came through a
// forwarding endpoint (or from a publisher that scopes its own ids).
const MaxScopedMsgIDLen = MaxMsgIDLen + scopePrefixLen

// ValidateMsgID checks a Nats-Msg-Id: 1 to max bytes of printable ASCII
// without spaces.
//
// Errors: INVALID_ARGUMENT (REQUEST-HEADER-INVALID).
func ValidateMsgID(id string, max int) error {
	if id == "" || len(id) > max {
		return Errorf(CodeInvalidArgument, IDHeaderInvalid, "Nats-Msg-Id must be 1 to %d bytes", max)
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return Errorf(CodeInvalidArgument, IDHeaderInvalid, "Nats-Msg-Id must be printable ASCII without spaces")
		}
	}
	return nil
}

// MsgIDScope is the prefix that scopes a Nats-Msg-Id to the principal with
// this issuer and subject. Ids that reach the stream through a forwarding
// endpoint are stored under it, so one caller can never occupy the ids of
// another: an id is only ever a repeat of the same principal's command.
func MsgIDScope(issuer, subject string) string {
	return "~" + base64.RawURLEncoding.EncodeToString(digest([]byte(issuer), []byte(subject)))[:22] + ":"
}

// digest is the SHA-256 of parts, each preceded by its length (a uvarint),
// so that no two lists of parts have the same input.
func digest(parts ...[]byte) []byte {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	for _, part := range parts {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(part)))])
		h.Write(part)
	}
	return h.Sum(nil)
}

// ScopeMsgID returns id scoped to the principal with issuer and subject.
// An id that already carries that principal's scope is returned as it is,
// so a publisher that scopes its own ids (to publish straight into the
// stream and resume through the endpoints) gets the same key both ways.
func ScopeMsgID(issuer, subject, id string) string {
	scope := MsgIDScope(issuer, subject)
	if strings.HasPrefix(id, scope) {
		return id
	}
	return scope + id
}

// FingerprintSize is the length of a command's fingerprint.
const FingerprintSize = 16

// Fingerprint identifies a command by what defines it: its subject (the
// operation and the user), the exact bytes of its body, and the issuer and
// subject of its verified token (empty when it has none that verifies). Not
// the token's bytes and not where the reply goes, so a retry from a new
// inbox with a fresh token of the same principal is the same command. A
// stored outcome answers only a command with the same fingerprint.
func Fingerprint(subject string, body []byte, issuer, principal string) []byte {
	return digest([]byte(subject), body, []byte(issuer), []byte(principal))[:FingerprintSize]
}
