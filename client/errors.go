package client

import (
	"errors"
	"strconv"
)

// Error is a refusal the worker answered (or, for a user id that cannot be
// a subject token, the client itself, as the worker would have). Match it
// with errors.Is against the sentinels below, or read its fields with
// errors.As.
type Error struct {
	// Code is the gRPC status code (3 INVALID_ARGUMENT, 9 FAILED_PRECONDITION, ...).
	Code int
	// ID is the stable id of the refusal, for example "PASSKEY-LAST".
	ID string
	// Message says what was wrong, without the id.
	Message string
	// HTTPStatus is the reply's Nats-Service-Error-Code: the HTTP status
	// grpc-gateway maps Code to. 0 for a refusal the client made.
	HTTPStatus int
}

func (e *Error) Error() string {
	return "passkeys: " + e.Message + " (" + e.ID + ", code " + strconv.Itoa(e.Code) + ")"
}

// Is reports whether target is the sentinel of e's id.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.ID == e.ID
}

// Unavailable reports whether e says to ask again later (gRPC code 14):
// the client does so itself until its context ends.
func (e *Error) Unavailable() bool { return e.Code == codeUnavailable }

// ErrOutcomeUnknown is wrapped, beside the refusal, by the error of a
// Remove or Sync whose token was refused (UNAUTHENTICATED) by a later
// attempt after an earlier one may have been applied (its reply did not
// come): the token expired or its key was retired in between, and the
// endpoint judges the token before it looks for the stored outcome. The
// change may have happened; ask for it with a fresh token and the same
// MsgID, or List. Check it before the refusal's sentinel.
var ErrOutcomeUnknown = errors.New("passkeys: an earlier attempt may have been applied; its outcome is unknown")

// ErrBadReply is wrapped by the error of a reply that does not follow the
// wire contract (a body that is not the contract's JSON, an error reply
// without its id). The error quotes the reply's first bytes.
var ErrBadReply = errors.New("passkeys: the reply does not follow the wire contract")

// gRPC codes the worker answers with.
const (
	codeInvalidArgument    = 3
	codeNotFound           = 5
	codePermissionDenied   = 7
	codeFailedPrecondition = 9
	codeInternal           = 13
	codeUnavailable        = 14
	codeUnauthenticated    = 16
)

func sentinel(code int, id string) *Error { return &Error{Code: code, ID: id} }

// One sentinel per error id the worker answers with (docs/operations.md,
// "Error ids"). errors.Is(err, ErrX) compares ids only.
var (
	// ErrBodyInvalid: the body is not the JSON the operation takes.
	ErrBodyInvalid = sentinel(codeInvalidArgument, "REQUEST-BODY-INVALID")
	// ErrBodyTooLarge: the body is over 64 KiB.
	ErrBodyTooLarge = sentinel(codeInvalidArgument, "REQUEST-BODY-TOO-LARGE")
	// ErrContentType: a Content-Type other than application/json.
	ErrContentType = sentinel(codeInvalidArgument, "REQUEST-CONTENT-TYPE")
	// ErrSubjectInvalid: the user id is not one NATS subject token of 1 to
	// 200 bytes (the client checks it before sending), or the subject names
	// another operation.
	ErrSubjectInvalid = sentinel(codeInvalidArgument, "REQUEST-SUBJECT-INVALID")
	// ErrTokenIDMissing: a removal without a passkey id.
	ErrTokenIDMissing = sentinel(codeInvalidArgument, "REQUEST-TOKENID-MISSING")
	// ErrTokenIDTooLong: a passkey id over 200 characters.
	ErrTokenIDTooLong = sentinel(codeInvalidArgument, "REQUEST-TOKENID-TOO-LONG")
	// ErrTokenIDInvalid: a passkey id with control characters.
	ErrTokenIDInvalid = sentinel(codeInvalidArgument, "REQUEST-TOKENID-INVALID")
	// ErrHeaderInvalid: a Nats-Msg-Id that is not 1 to 256 printable ASCII
	// bytes, or given twice.
	ErrHeaderInvalid = sentinel(codeInvalidArgument, "REQUEST-HEADER-INVALID")
	// ErrMsgIDReused: the Nats-Msg-Id belongs to another command (another
	// user, passkey, body or principal); its outcome is not this call's.
	ErrMsgIDReused = sentinel(codeInvalidArgument, "REQUEST-MSGID-REUSED")
	// ErrSyncInvalid: a sync body the rules refuse (a passkey state other
	// than ready or not_ready, a duplicate passkey id, ...).
	ErrSyncInvalid = sentinel(codeInvalidArgument, "REQUEST-SYNC-INVALID")
	// ErrReplayInvalid: a replay request outside the rules (administrators' tool).
	ErrReplayInvalid = sentinel(codeInvalidArgument, "REQUEST-REPLAY-INVALID")

	// ErrAuthMissing: no token (WithToken or Token).
	ErrAuthMissing = sentinel(codeUnauthenticated, "AUTH-MISSING")
	// ErrAuthMalformed: the token is not a well-formed signed JWT.
	ErrAuthMalformed = sentinel(codeUnauthenticated, "AUTH-MALFORMED")
	// ErrAuthAlgorithm: the token's algorithm is not allowed.
	ErrAuthAlgorithm = sentinel(codeUnauthenticated, "AUTH-ALGORITHM")
	// ErrAuthKeyUnknown: no key in force has the token's key id.
	ErrAuthKeyUnknown = sentinel(codeUnauthenticated, "AUTH-KEY-UNKNOWN")
	// ErrAuthSignature: the token's signature does not verify.
	ErrAuthSignature = sentinel(codeUnauthenticated, "AUTH-SIGNATURE")
	// ErrAuthIssuer: the token's iss is not the trusted issuer.
	ErrAuthIssuer = sentinel(codeUnauthenticated, "AUTH-ISSUER")
	// ErrAuthAudience: the token's aud does not name the service.
	ErrAuthAudience = sentinel(codeUnauthenticated, "AUTH-AUDIENCE")
	// ErrAuthExpired: the token had expired when the command was stored.
	ErrAuthExpired = sentinel(codeUnauthenticated, "AUTH-EXPIRED")
	// ErrAuthNotYetValid: the token was not yet valid when the command was stored.
	ErrAuthNotYetValid = sentinel(codeUnauthenticated, "AUTH-NOT-YET-VALID")
	// ErrAuthClaims: the token's claims are missing or of the wrong types.
	ErrAuthClaims = sentinel(codeUnauthenticated, "AUTH-CLAIMS")

	// ErrDeniedUser: the principal may not act on this user (whether or
	// not it exists).
	ErrDeniedUser = sentinel(codePermissionDenied, "PERMISSION-USER")
	// ErrDeniedForce: only an administrator may Force a removal.
	ErrDeniedForce = sentinel(codePermissionDenied, "PERMISSION-FORCE")
	// ErrDeniedSync: only an administrator of the user's organisation may Sync.
	ErrDeniedSync = sentinel(codePermissionDenied, "PERMISSION-SYNC")
	// ErrDeniedReplay: only a passkeys:system principal may replay commands.
	ErrDeniedReplay = sentinel(codePermissionDenied, "PERMISSION-REPLAY")

	// ErrUserNotFound: no such user (told only to a passkeys:system principal).
	ErrUserNotFound = sentinel(codeNotFound, "USER-NOT-FOUND")
	// ErrPasskeyNotFound: the user has no such passkey, or it was removed already.
	ErrPasskeyNotFound = sentinel(codeNotFound, "PASSKEY-NOT-FOUND")
	// ErrLastPasskey: removing it would leave the user no first-factor
	// login method; an administrator may Force it.
	ErrLastPasskey = sentinel(codeFailedPrecondition, "PASSKEY-LAST")
	// ErrOwnerImmutable: a sync would move the user to another organisation.
	ErrOwnerImmutable = sentinel(codeFailedPrecondition, "USER-RESOURCEOWNER-IMMUTABLE")

	// ErrInternal: the worker failed on this command in a way asking again
	// would not change (it is stored, and a repeat gets it again).
	ErrInternal = sentinel(codeInternal, "INTERNAL")
	// ErrRetriesExhausted: an outcome stored by worker versions before
	// partitions, which gave up on a command the store kept failing.
	ErrRetriesExhausted = sentinel(codeInternal, "COMMAND-RETRIES-EXHAUSTED")
	// ErrStreamUnavailable: the command could not be stored, so was not
	// applied (retried by the client).
	ErrStreamUnavailable = sentinel(codeUnavailable, "STREAM-UNAVAILABLE")
	// ErrOutcomeUnavailable: the command is stored but not processed yet
	// (retried by the client with the same id).
	ErrOutcomeUnavailable = sentinel(codeUnavailable, "OUTCOME-UNAVAILABLE")
	// ErrPartitionUnavailable: no worker serves the user's partition at the
	// moment, a failover is under way (retried by the client).
	ErrPartitionUnavailable = sentinel(codeUnavailable, "PARTITION-UNAVAILABLE")
	// ErrKeysUnavailable: the worker could not read the trusted keys at the
	// moment (retried by the client).
	ErrKeysUnavailable = sentinel(codeUnavailable, "KEYS-UNAVAILABLE")
)
