// Package client removes, lists and syncs passkeys through the passkeys
// worker's request-reply endpoints (passkeys.remove.<userId>,
// passkeys.list.<userId>, passkeys.sync.<userId>), so a calling service
// needs to know neither the subjects, the headers nor the reply shapes of
// the wire contract. It needs the rights of the shipped nats.conf's
// passkeys-service user (passkeys-admin for Sync), and a *nats.Conn made
// with that user's inbox prefix (nats.CustomInboxPrefix("_INBOX_<user>")).
//
//	c := client.New(nc, client.WithToken(token))
//	d, err := c.Remove(ctx, "u1", "pk-1")
//	switch {
//	case errors.Is(err, client.ErrLastPasskey): // the user's last way to log in
//	case err != nil:
//	default: // removed: d.Sequence is the user's sequence after it
//	}
//
// # Retries
//
// Every Remove and Sync carries a Nats-Msg-Id: the caller's (MsgID) or one
// the client makes up, 128 random bits. The worker applies a command once
// per id and answers a repeat with the first reply, byte for byte, so the
// client asks again, with the same id and body, whenever asking again cannot
// change the outcome and may get it:
//
//   - no reply within the attempt's wait: the first attempt waits
//     WithAttemptTimeout (2 s unless set), the next ones about twice that
//     (give or take a quarter), never past the context's deadline;
//   - no worker listening (nats.ErrNoResponders: all workers restarting);
//   - an UNAVAILABLE answer (gRPC code 14: PARTITION-UNAVAILABLE during a
//     failover, STREAM-UNAVAILABLE, OUTCOME-UNAVAILABLE, KEYS-UNAVAILABLE),
//     after a pause that starts at 50 ms and doubles up to 2 s, with jitter.
//
// It stops at the first other answer, success or error, and when the
// context ends; a context without a deadline gets WithTimeout's (30 s
// unless set). The error of a context that ended wraps the context's error
// (errors.Is(err, context.DeadlineExceeded)) and says what the last attempt
// got. So a caller that keeps one MsgID for one intention (a revocation
// request's own id, say) may also retry a whole call, hours later, and never
// remove twice or lose the answer, within the worker's outcome retention
// (7 days by default), as long as it calls as the same principal: the
// worker keeps ids per token subject and issuer, so the same MsgID under
// another principal (a rotated service account, another administrator) is
// another command. List is a read: it is retried the same way, with no id.
//
// Two answers need more than asking again. A token refused after an
// earlier attempt may have been applied wraps ErrOutcomeUnknown (the token
// expired, or its key was retired, in between). And OUTCOME-UNAVAILABLE for
// a command the worker applied but keeps no outcome of (it should not
// happen; the worker logs it) stays so: the call ends with its context.
//
// # Errors
//
// A refusal is an *Error carrying the gRPC code, the stable id and the
// message; errors.Is matches it against the sentinel of its id
// (ErrLastPasskey, ErrPasskeyNotFound, ...), one per id the worker uses.
// A reply that does not follow the contract is an error wrapping
// ErrBadReply that quotes the reply's first bytes: the client never guesses.
//
// # Traces
//
// Each call is a span (the global OpenTelemetry tracer provider unless
// WithTracerProvider), and its W3C traceparent and tracestate headers go
// with every attempt, so the worker's spans, its reply and the removal
// event belong to the caller's trace.
package client
