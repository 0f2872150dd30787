package client

import (
	"errors"
	"strconv"

	"github.com/passkeys/worker/passkey"
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
func (e *Error) Unavailable() bool { return e.Code == int(passkey.CodeUnavailable) }

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

func sentinel(code passkey.Code, id string) *Error { return &Error{Code: int(code), ID: id} }

// One sentinel per error id the worker answers with (docs/operations.md,
// "Error ids"; the ids and codes are package passkey's, the worker's own).
// errors.Is(err, ErrX) compares ids only.
var (
	// ErrBodyInvalid: the body is not the JSON the operation takes.
	ErrBodyInvalid = sentinel(passkey.CodeInvalidArgument, passkey.IDBodyInvalid)
	// ErrBodyTooLarge: the body is over 64 KiB.
	ErrBodyTooLarge = sentinel(passkey.CodeInvalidArgument, passkey.IDBodyTooLarge)
	// ErrContentType: a Content-Type other than application/json.
	ErrContentType = sentinel(passkey.CodeInvalidArgument, passkey.IDContentType)
	// ErrSubjectInvalid: the user id is not one NATS subject token of 1 to
	// 200 bytes (the client checks it before sending), or the subject names
	// another operation.
	ErrSubjectInvalid = sentinel(passkey.CodeInvalidArgument, passkey.IDSubjectInvalid)
	// ErrTokenIDMissing: a removal without a passkey id.
	ErrTokenIDMissing = sentinel(passkey.CodeInvalidArgument, passkey.IDTokenIDMissing)
	// ErrTokenIDTooLong: a passkey id over 200 characters.
	ErrTokenIDTooLong = sentinel(passkey.CodeInvalidArgument, passkey.IDTokenIDTooLong)
	// ErrTokenIDInvalid: a passkey id with control characters.
	ErrTokenIDInvalid = sentinel(passkey.CodeInvalidArgument, passkey.IDTokenIDInvalid)
	// ErrHeaderInvalid: a Nats-Msg-Id that is not 1 to 256 printable ASCII
	// bytes, or given twice.
	ErrHeaderInvalid = sentinel(passkey.CodeInvalidArgument, passkey.IDHeaderInvalid)
	// ErrMsgIDReused: the Nats-Msg-Id belongs to another command (another
	// user, passkey, body or principal); its outcome is not this call's.
	ErrMsgIDReused = sentinel(passkey.CodeInvalidArgument, passkey.IDMsgIDReused)
	// ErrSyncInvalid: a sync body the rules refuse (a passkey state other
	// than ready or not_ready, a duplicate passkey id, ...).
	ErrSyncInvalid = sentinel(passkey.CodeInvalidArgument, passkey.IDSyncInvalid)
	// ErrReplayInvalid: a replay request outside the rules (administrators' tool).
	ErrReplayInvalid = sentinel(passkey.CodeInvalidArgument, passkey.IDReplayInvalid)

	// ErrAuthMissing: no token (WithToken or Token).
	ErrAuthMissing = sentinel(passkey.CodeUnauthenticated, passkey.IDAuthMissing)
	// ErrAuthMalformed: the token is not a well-formed signed JWT.
	ErrAuthMalformed = sentinel(passkey.CodeUnauthenticated, passkey.IDAuthMalformed)
	// ErrAuthAlgorithm: the token's algorithm is not allowed.
	ErrAuthAlgorithm = sentinel(passkey.CodeUnauthenticated, passkey.IDAuthAlgorithm)
	// ErrAuthKeyUnknown: no key in force has the token's key id.
	ErrAuthKeyUnknown = sentinel(passkey.CodeUnauthenticated, passkey.IDAuthKeyUnknown)
	// ErrAuthSignature: the token's signature does not verify.
	ErrAuthSignature = sentinel(passkey.CodeUnauthenticated, passkey.IDAuthSignature)
	// ErrAuthIssuer: the token's iss is not the trusted issuer.
	ErrAuthIssuer = sentinel(passkey.CodeUnauthenticated, passkey.IDAuthIssuer)
	// ErrAuthAudience: the token's aud does not name the service.
	ErrAuthAudience = sentinel(passkey.CodeUnauthenticated, passkey.IDAuthAudience)
	// ErrAuthExpired: the token had expired when the command was stored.
	ErrAuthExpired = sentinel(passkey.CodeUnauthenticated, passkey.IDAuthExpired)
	// ErrAuthNotYetValid: the token was not yet valid when the command was stored.
	ErrAuthNotYetValid = sentinel(passkey.CodeUnauthenticated, passkey.IDAuthNotYetValid)
	// ErrAuthClaims: the token's claims are missing or of the wrong types.
	ErrAuthClaims = sentinel(passkey.CodeUnauthenticated, passkey.IDAuthClaims)

	// ErrDeniedUser: the principal may not act on this user (whether or
	// not it exists).
	ErrDeniedUser = sentinel(passkey.CodePermissionDenied, passkey.IDDeniedUser)
	// ErrDeniedForce: only an administrator may Force a removal.
	ErrDeniedForce = sentinel(passkey.CodePermissionDenied, passkey.IDDeniedForce)
	// ErrDeniedSync: only an administrator of the user's organisation may Sync.
	ErrDeniedSync = sentinel(passkey.CodePermissionDenied, passkey.IDDeniedSync)
	// ErrDeniedReplay: only a passkeys:system principal may replay commands.
	ErrDeniedReplay = sentinel(passkey.CodePermissionDenied, passkey.IDDeniedReplay)

	// ErrUserNotFound: no such user (told only to a passkeys:system principal).
	ErrUserNotFound = sentinel(passkey.CodeNotFound, passkey.IDUserNotFound)
	// ErrPasskeyNotFound: the user has no such passkey, or it was removed already.
	ErrPasskeyNotFound = sentinel(passkey.CodeNotFound, passkey.IDPasskeyNotFound)
	// ErrLastPasskey: removing it would leave the user no first-factor
	// login method; an administrator may Force it.
	ErrLastPasskey = sentinel(passkey.CodeFailedPrecondition, passkey.IDPasskeyLast)
	// ErrOwnerImmutable: a sync would move the user to another organisation.
	ErrOwnerImmutable = sentinel(passkey.CodeFailedPrecondition, passkey.IDOwnerImmutable)

	// ErrInternal: the worker failed on this command in a way asking again
	// would not change (it is stored, and a repeat gets it again).
	ErrInternal = sentinel(passkey.CodeInternal, passkey.IDInternal)
	// ErrRetriesExhausted: an outcome stored by worker versions before
	// partitions, which gave up on a command the store kept failing.
	ErrRetriesExhausted = sentinel(passkey.CodeInternal, passkey.IDRetriesExhausted)
	// ErrStreamUnavailable: the command could not be stored, so was not
	// applied (retried by the client).
	ErrStreamUnavailable = sentinel(passkey.CodeUnavailable, passkey.IDStreamUnavailable)
	// ErrOutcomeUnavailable: the command is stored but not processed yet
	// (retried by the client with the same id).
	ErrOutcomeUnavailable = sentinel(passkey.CodeUnavailable, passkey.IDOutcomeUnavailable)
	// ErrPartitionUnavailable: no worker serves the user's partition at the
	// moment, a failover is under way (retried by the client).
	ErrPartitionUnavailable = sentinel(passkey.CodeUnavailable, passkey.IDPartitionUnavailable)
	// ErrKeysUnavailable: the worker could not read the trusted keys at the
	// moment (retried by the client).
	ErrKeysUnavailable = sentinel(passkey.CodeUnavailable, passkey.IDKeysUnavailable)
)
