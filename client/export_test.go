package client

// Sentinels lists every sentinel, for TestOneSentinelPerErrorID.
func Sentinels() []*Error {
	return []*Error{ErrBodyInvalid, ErrBodyTooLarge, ErrContentType, ErrSubjectInvalid, ErrTokenIDMissing,
		ErrTokenIDTooLong, ErrTokenIDInvalid, ErrHeaderInvalid, ErrMsgIDReused, ErrSyncInvalid, ErrReplayInvalid,
		ErrAuthMissing, ErrAuthMalformed, ErrAuthAlgorithm, ErrAuthKeyUnknown, ErrAuthSignature, ErrAuthIssuer,
		ErrAuthAudience, ErrAuthExpired, ErrAuthNotYetValid, ErrAuthClaims, ErrDeniedUser, ErrDeniedForce,
		ErrDeniedSync, ErrDeniedReplay, ErrUserNotFound, ErrPasskeyNotFound, ErrLastPasskey, ErrOwnerImmutable,
		ErrInternal, ErrRetriesExhausted, ErrStreamUnavailable, ErrOutcomeUnavailable, ErrPartitionUnavailable,
		ErrKeysUnavailable}
}
