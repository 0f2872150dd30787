// Package passkey holds the rules of passkey removal: who may change which
// user, which login methods count, and what every refusal is called. It knows
// nothing of NATS or bbolt; packages reply and service adapt it to the wire and the
// storage package keeps its records.
package passkey

import (
	"errors"
	"fmt"
)

// Code is a gRPC status code, as ZITADEL's API reports it.
type Code int

// The gRPC codes this service answers with.
const (
	CodeInvalidArgument    Code = 3
	CodeNotFound           Code = 5
	CodePermissionDenied   Code = 7
	CodeFailedPrecondition Code = 9
	CodeInternal           Code = 13
	CodeUnavailable        Code = 14
	CodeUnauthenticated    Code = 16
)

// Status is what a gRPC code is called outside: the HTTP status
// grpc-gateway maps it to (the Nats-Service-Error-Code header) and the
// code's name (the passkeys_commands_total label; OK for a success). The
// one mapping: the replies, the metrics and the client package use it.
func (c Code) Status() (httpStatus int, name string) {
	switch c {
	case 0:
		return 200, "OK"
	case CodeInvalidArgument:
		return 400, "INVALID_ARGUMENT"
	case CodeFailedPrecondition:
		return 400, "FAILED_PRECONDITION"
	case CodeUnauthenticated:
		return 401, "UNAUTHENTICATED"
	case CodePermissionDenied:
		return 403, "PERMISSION_DENIED"
	case CodeNotFound:
		return 404, "NOT_FOUND"
	case CodeUnavailable:
		return 503, "UNAVAILABLE"
	case CodeInternal:
		return 500, "INTERNAL"
	default:
		return 500, "UNKNOWN"
	}
}

// Error is a definitive answer that is not a success. ID is stable: clients
// and tests match on it, so an ID, once published, never changes meaning.
type Error struct {
	Code    Code
	ID      string
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%s (%s)", e.Message, e.ID) }

// Errorf builds an *Error.
func Errorf(code Code, id, format string, args ...any) *Error {
	return &Error{Code: code, ID: id, Message: fmt.Sprintf(format, args...)}
}

// AsError returns err as an *Error. Anything that is not one becomes a
// generic INTERNAL error, so no internal detail reaches a client; the caller
// logs the original.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return ErrInternal
}

// Stable error ids. The table in docs/contract.md names the cases; these
// are the ids a client matches on.
const (
	IDBodyInvalid     = "REQUEST-BODY-INVALID"
	IDBodyTooLarge    = "REQUEST-BODY-TOO-LARGE"
	IDContentType     = "REQUEST-CONTENT-TYPE"
	IDSubjectInvalid  = "REQUEST-SUBJECT-INVALID"
	IDTokenIDMissing  = "REQUEST-TOKENID-MISSING"
	IDTokenIDTooLong  = "REQUEST-TOKENID-TOO-LONG"
	IDTokenIDInvalid  = "REQUEST-TOKENID-INVALID"
	IDHeaderInvalid   = "REQUEST-HEADER-INVALID"
	IDMsgIDReused     = "REQUEST-MSGID-REUSED"
	IDSyncInvalid     = "REQUEST-SYNC-INVALID"
	IDAuthMissing     = "AUTH-MISSING"
	IDAuthMalformed   = "AUTH-MALFORMED"
	IDAuthAlgorithm   = "AUTH-ALGORITHM"
	IDAuthKeyUnknown  = "AUTH-KEY-UNKNOWN"
	IDAuthSignature   = "AUTH-SIGNATURE"
	IDAuthIssuer      = "AUTH-ISSUER"
	IDAuthAudience    = "AUTH-AUDIENCE"
	IDAuthExpired     = "AUTH-EXPIRED"
	IDAuthNotYetValid = "AUTH-NOT-YET-VALID"
	IDAuthClaims      = "AUTH-CLAIMS"
	IDDeniedUser      = "PERMISSION-USER"
	IDDeniedForce     = "PERMISSION-FORCE"
	IDDeniedSync      = "PERMISSION-SYNC"
	IDDeniedReplay    = "PERMISSION-REPLAY"
	IDReplayInvalid   = "REQUEST-REPLAY-INVALID"
	IDUserNotFound    = "USER-NOT-FOUND"
	IDPasskeyNotFound = "PASSKEY-NOT-FOUND"
	IDPasskeyLast     = "PASSKEY-LAST"
	IDOwnerImmutable  = "USER-RESOURCEOWNER-IMMUTABLE"
	IDInternal        = "INTERNAL"
	// IDRetriesExhausted was the version before partitions' answer to a
	// command the store kept failing; outcomes it stored still carry it.
	// Today's worker waits instead, and never gives it.
	IDRetriesExhausted     = "COMMAND-RETRIES-EXHAUSTED"
	IDStreamUnavailable    = "STREAM-UNAVAILABLE"
	IDOutcomeUnavailable   = "OUTCOME-UNAVAILABLE"
	IDPartitionUnavailable = "PARTITION-UNAVAILABLE"
	IDKeysUnavailable      = "KEYS-UNAVAILABLE"
)

// MaxTokenSize bounds a bearer token, so a hostile caller cannot make the
// worker parse megabytes of base64.
const MaxTokenSize = 8 << 10

// Shared errors that carry no per-request detail.
var (
	// ErrInternal is what every unexpected failure looks like to a client.
	ErrInternal = &Error{Code: CodeInternal, ID: IDInternal, Message: "internal error"}
	// ErrDeniedUser answers a principal acting on a user it may not touch,
	// whether or not that user exists.
	ErrDeniedUser = &Error{Code: CodePermissionDenied, ID: IDDeniedUser, Message: "the principal may not act on this user"}
	// ErrDeniedForce answers a non-administrator that set force.
	ErrDeniedForce = &Error{Code: CodePermissionDenied, ID: IDDeniedForce, Message: "only an administrator may force a removal"}
	// ErrDeniedSync answers a non-administrator that sent a sync.
	ErrDeniedSync = &Error{Code: CodePermissionDenied, ID: IDDeniedSync, Message: "only an administrator of the user's organisation may sync it"}
	// ErrBodyTooLarge answers a command or request whose body is over
	// MaxBodySize.
	ErrBodyTooLarge = Errorf(CodeInvalidArgument, IDBodyTooLarge, "the body must be at most %d bytes", MaxBodySize)
	// ErrUserNotFound answers a command on a user the store does not hold.
	ErrUserNotFound = &Error{Code: CodeNotFound, ID: IDUserNotFound, Message: "user not found"}
	// ErrPasskeyNotFound answers a removal of a passkey the user does not
	// have, including one already removed.
	ErrPasskeyNotFound = &Error{Code: CodeNotFound, ID: IDPasskeyNotFound, Message: "passkey not found"}
	// ErrPasskeyLast answers a removal that would leave the user no
	// first-factor login method.
	ErrPasskeyLast = &Error{Code: CodeFailedPrecondition, ID: IDPasskeyLast, Message: "the passkey is the user's last way to log in"}
	// ErrOwnerImmutable answers a sync that would move a user to another
	// organisation.
	ErrOwnerImmutable = &Error{Code: CodeFailedPrecondition, ID: IDOwnerImmutable, Message: "a user's resourceOwner cannot change"}

	// ErrListNotACommand answers a list stored in the stream as a command.
	ErrListNotACommand = &Error{Code: CodeInvalidArgument, ID: IDSubjectInvalid,
		Message: "list is a request, not a command: use passkeys.list.<userId>"}
	// ErrWrongOperation answers a request whose subject names an operation
	// other than its endpoint's.
	ErrWrongOperation = &Error{Code: CodeInvalidArgument, ID: IDSubjectInvalid, Message: "unexpected operation in the subject"}
	// ErrOneMsgID answers a command or request with several Nats-Msg-Id
	// headers.
	ErrOneMsgID = &Error{Code: CodeInvalidArgument, ID: IDHeaderInvalid, Message: "only one Nats-Msg-Id header is allowed"}
	// ErrReplyTo answers a command whose Reply-To the worker will not
	// publish to.
	ErrReplyTo = &Error{Code: CodeInvalidArgument, ID: IDHeaderInvalid,
		Message: "Reply-To must be one subject of at most 256 bytes outside the $ and passkeys namespaces, without wildcards"}
	// ErrTTLRefused answers, from rules version 2 on, a command stored with
	// a Nats-TTL header: it would leave the stream before its outcome
	// does, and a rebuild from the stream would then miss a change a store
	// made.
	ErrTTLRefused = &Error{Code: CodeInvalidArgument, ID: IDHeaderInvalid,
		Message: "a command may not carry Nats-TTL: it must stay in the stream as long as its outcome"}
	// ErrMsgIDReused answers a command whose Nats-Msg-Id was already used by
	// another command (another subject, body or principal): its outcome
	// belongs to someone else.
	ErrMsgIDReused = &Error{Code: CodeInvalidArgument, ID: IDMsgIDReused,
		Message: "the Nats-Msg-Id was already used for another command; use a new one"}
	// ErrReplayInvalid answers a replay request without a valid range.
	ErrReplayInvalid = &Error{Code: CodeInvalidArgument, ID: IDReplayInvalid,
		Message: `the body must be {"fromSeq": N, "toSeq": M} with 1 <= N <= M, and may add "since", "until" (RFC 3339) and "userId"`}
	// ErrDeniedReplay answers a replay by a principal without the
	// passkeys:system scope.
	ErrDeniedReplay = &Error{Code: CodePermissionDenied, ID: IDDeniedReplay,
		Message: "only a principal with the passkeys:system scope may replay commands"}
	// ErrStreamUnavailable answers a request a forwarding endpoint could not
	// store.
	ErrStreamUnavailable = &Error{Code: CodeUnavailable, ID: IDStreamUnavailable,
		Message: "the command could not be stored; it was not applied, try again"}
	// Token refusals (package auth): UNAUTHENTICATED, by what is wrong.
	ErrAuthMissing     = &Error{Code: CodeUnauthenticated, ID: IDAuthMissing, Message: "the Authorization header is required"}
	ErrAuthTwice       = &Error{Code: CodeUnauthenticated, ID: IDAuthMalformed, Message: "only one Authorization header is allowed"}
	ErrAuthNotBearer   = &Error{Code: CodeUnauthenticated, ID: IDAuthMalformed, Message: "the Authorization header must be 'Bearer <JWT>'"}
	ErrAuthTooLarge    = Errorf(CodeUnauthenticated, IDAuthMalformed, "the token is larger than %d bytes", MaxTokenSize)
	ErrAuthNotJWT      = &Error{Code: CodeUnauthenticated, ID: IDAuthMalformed, Message: "the token is not a well-formed signed JWT"}
	ErrAuthAlgorithm   = &Error{Code: CodeUnauthenticated, ID: IDAuthAlgorithm, Message: "the token's signature algorithm is not allowed"}
	ErrAuthKeyUnknown  = &Error{Code: CodeUnauthenticated, ID: IDAuthKeyUnknown, Message: "no trusted key matches the token's key id"}
	ErrAuthSignature   = &Error{Code: CodeUnauthenticated, ID: IDAuthSignature, Message: "the token's signature is not valid"}
	ErrAuthClaimTypes  = &Error{Code: CodeUnauthenticated, ID: IDAuthClaims, Message: "the token's claims are not of the types a JWT's claims have"}
	ErrAuthNoSubOrExp  = &Error{Code: CodeUnauthenticated, ID: IDAuthClaims, Message: "the token must carry sub and exp"}
	ErrAuthClaims      = &Error{Code: CodeUnauthenticated, ID: IDAuthClaims, Message: "the token's claims are not valid"}
	ErrAuthIssuer      = &Error{Code: CodeUnauthenticated, ID: IDAuthIssuer, Message: "the token's issuer is not trusted"}
	ErrAuthAudience    = &Error{Code: CodeUnauthenticated, ID: IDAuthAudience, Message: "the token is not meant for this service"}
	ErrAuthExpired     = &Error{Code: CodeUnauthenticated, ID: IDAuthExpired, Message: "the token had expired when the command was sent"}
	ErrAuthNotYetValid = &Error{Code: CodeUnauthenticated, ID: IDAuthNotYetValid, Message: "the token was not yet valid when the command was sent"}

	// ErrOutcomeUnavailable answers a repeat whose original was not
	// processed within the wait.
	ErrOutcomeUnavailable = &Error{Code: CodeUnavailable, ID: IDOutcomeUnavailable,
		Message: "the command is stored but not processed yet; repeat it with the same Nats-Msg-Id for its outcome"}
	// ErrPartitionUnavailable answers a read of a user whose partition no
	// worker serves at the moment (a failover under way).
	ErrPartitionUnavailable = &Error{Code: CodeUnavailable, ID: IDPartitionUnavailable,
		Message: "no worker serves this user's partition at the moment; try again shortly"}
	// ErrKeysUnavailable answers a request that came before the worker had
	// read any key set, so could not tell which keys are in force.
	ErrKeysUnavailable = &Error{Code: CodeUnavailable, ID: IDKeysUnavailable,
		Message: "the trusted keys could not be read at the moment; try again shortly"}
)
