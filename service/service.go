package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/internal/clock"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/internal/traceprop"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/reply"
	"github.com/passkeys/worker/storage"
)

// Name and Version identify the micro service ($SRV.INFO).
const (
	Name    = "passkeys"
	Version = "1.0.0"
)

// Endpoints answer the core request-reply endpoints: it forwards remove and
// sync into the stream with the requester's inbox as Reply-To, and answers
// list from the store.
type Endpoints struct {
	JS jetstream.JetStream
	// Reader reads stored commands (a duplicate's original) from stream
	// PASSKEYS as its leader has them.
	Reader *jsread.Reader
	// Conn carries the requests to the worker that holds a user's
	// partition, when it is another.
	Conn *nats.Conn
	// Router tells which partition a user is in and whether this
	// worker serves it.
	Router   Router
	Verifier *auth.Verifier
	Log      zerolog.Logger
	// Keys is the key set requests are judged by: the newest this worker
	// has read (trust.Local.KeySet; nil before one is), at Now; a
	// command, once stored, is judged by the key set in force at its place
	// in the stream, at its stream timestamp.
	Keys func() *auth.KeySet
	// Now is the time a request is judged at: the stream leader's clock
	// (trust.Local.Now), not this machine's; nil: this machine's.
	Now func(context.Context) (time.Time, error)
	// Fresh, when set, reads the newest key set again unless a read that
	// began at since or later did (trust.Local.Fresh): a token that the
	// key set in hand refuses is judged again by one read since the
	// request came.
	Fresh func(ctx context.Context, since clock.Instant) error
	// OutcomeWait bounds how long a repeated request (a duplicate publish)
	// waits for the outcome of the original, still being processed.
	OutcomeWait time.Duration
	// Answers, when set, are reported in $SRV.STATS for remove and sync.
	Answers *AnswerStats
	// Replayer, when set, serves passkeys.admin.replay.
	Replayer func(context.Context, handler.ReplayRange) (handler.ReplayReport, error)
	// Tracer, when set, records a span per forwarded request (its forward
	// and the wait for the stream's acknowledgement, or for a repeat's
	// outcome), in the trace the request carries, and the forwarded command
	// carries the span's context. Without it the command carries the
	// request's trace context as it came.
	Tracer trace.Tracer
}

// Start registers the passkeys micro service on nc.
func (s *Endpoints) Start(nc *nats.Conn) (micro.Service, error) {
	cfg := micro.Config{
		Name:        Name,
		Version:     Version,
		Description: "Removes passkeys from user accounts",
	}
	if s.Answers != nil {
		cfg.StatsHandler = s.Answers.statsHandler
	}
	svc, err := micro.AddService(nc, cfg)
	if err != nil {
		return nil, err
	}
	endpoints := []struct {
		op      passkey.Op
		handler micro.HandlerFunc
	}{
		{passkey.OpRemove, s.forward(passkey.OpRemove)},
		{passkey.OpSync, s.forward(passkey.OpSync)},
		{passkey.OpList, s.list},
	}
	for _, e := range endpoints {
		err := svc.AddEndpoint(string(e.op), s.confined(e.handler),
			micro.WithEndpointSubject(partition.EndpointSubject(string(e.op), "*")))
		if err != nil {
			_ = svc.Stop()
			return nil, err
		}
	}
	if s.Replayer != nil {
		if err := svc.AddEndpoint("replay", s.confined(s.replay), micro.WithEndpointSubject(partition.ReplaySubject)); err != nil {
			_ = svc.Stop()
			return nil, err
		}
	}
	// The endpoints' subscriptions reach the server before Start returns
	// (while the connection is down they are made on reconnecting).
	_ = nc.FlushTimeout(2 * time.Second)
	return svc, nil
}

// verify judges the token of a request with header h by the keys in
// force now.
//
// Errors: those of auth.Verifier.Verify, and UNAVAILABLE
// (KEYS-UNAVAILABLE) while no key set has been read.
func (s *Endpoints) verify(h command.Header) (passkey.Principal, error) {
	arrived := clock.Now()
	keys := s.Keys()
	now, err := s.now(context.Background(), 3*time.Second)
	if keys == nil || err != nil {
		s.Log.Warn().Err(err).Bool("keys", keys != nil).Msg("request refused: no key set read yet, or the stream leader's clock could not be read")
		return passkey.Principal{}, passkey.ErrKeysUnavailable
	}
	p, err := s.Verifier.Verify(h.ValuesFold(command.HeaderAuthorization), now, keys)
	if !keyRefusal(err) || s.Fresh == nil {
		return p, err
	}
	// Perhaps a key set this worker has not read yet trusts it.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.Fresh(ctx, arrived); err != nil {
		s.Log.Warn().Err(err).Msg("request refused: the newest key set could not be read")
		return passkey.Principal{}, passkey.ErrKeysUnavailable
	}
	if fresh := s.Keys(); fresh.ID != keys.ID {
		return s.Verifier.Verify(h.ValuesFold(command.HeaderAuthorization), now, fresh)
	}
	return p, err
}

// keyRefusal tells whether err refuses a token that a newer key set may
// trust: its key, signature, issuer or audience.
func keyRefusal(err error) bool {
	return errors.Is(err, passkey.ErrAuthKeyUnknown) || errors.Is(err, passkey.ErrAuthSignature) ||
		errors.Is(err, passkey.ErrAuthIssuer) || errors.Is(err, passkey.ErrAuthAudience)
}

// now is Now, read within timeout; this machine's wall clock without Now.
func (s *Endpoints) now(ctx context.Context, timeout time.Duration) (time.Time, error) {
	if s.Now == nil {
		return clock.Wall(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return s.Now(ctx)
}

// respond answers a request, in the trace the request carries (its
// traceparent and tracestate headers). The only failure is a requester that
// is gone or a connection that is closing; neither can be answered, so it
// is dropped.
func respond(req micro.Request, r reply.Wire) {
	var opts []micro.RespondOpt
	if parent, state := traceprop.Of(nats.Header(req.Headers())); parent != "" {
		h := nats.Header{}
		traceprop.Set(h, parent, state)
		opts = append(opts, micro.WithHeaders(micro.Headers(h)))
	}
	if r.IsError() {
		_ = req.Error(r.ErrorCode, r.ErrorText, r.Body, opts...)
		return
	}
	_ = req.Respond(r.Body, opts...)
}

// startSpan starts the span of a request at endpoint op, in the trace the
// request carries; a span that records nothing without a Tracer.
func (s *Endpoints) startSpan(req micro.Request, op passkey.Op) (context.Context, trace.Span) {
	if s.Tracer == nil {
		return context.Background(), noop.Span{}
	}
	return s.Tracer.Start(traceprop.Extract(context.Background(), nats.Header(req.Headers())), "passkeys.endpoint."+string(op),
		trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
			attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", req.Subject())))
}

// respondError answers a request with err. An error that is not a
// definitive *passkey.Error is INTERNAL to the caller, with a generic
// message, and logged here once with its detail (WTF Dial's http.Error):
// no other place logs what it answers.
func (s *Endpoints) respondError(req micro.Request, err error) {
	e := passkey.AsError(err)
	if e.Code == passkey.CodeInternal {
		s.Log.Error().Err(err).Str("subject", command.Truncate(req.Subject())).Msg("request failed")
	}
	respond(req, reply.Error(e))
}

// confined serves a request only when its reply subject is one the worker
// may publish to, as command.CheckReplyTo decides for a command's Reply-To: the
// worker's connection may write into the stream, the dead-letter stream and
// the JetStream API, and a request must not be able to aim its answer there.
// A request with such a reply subject cannot be answered at all; it is
// dropped and logged.
func (s *Endpoints) confined(h micro.HandlerFunc) micro.HandlerFunc {
	return func(req micro.Request) {
		if reply := req.Reply(); reply != "" && command.CheckReplyTo([]string{reply}) != nil {
			s.Log.Warn().Str("subject", command.Truncate(req.Subject())).Str("reply_to", command.Truncate(reply)).
				Msg("request dropped: the worker does not publish to its reply subject")
			return
		}
		h(req)
	}
}

// forward stores the request as a command in the stream. The reply comes
// from the consumer once the command is processed, straight to the
// requester's inbox; a request refused before it is stored (a bad subject,
// body size or Nats-Msg-Id, or a token that does not verify) and a failure
// to store it are answered here. The token is verified first so that no
// unauthenticated caller ever gets a command into the stream, and a
// Nats-Msg-Id is stored scoped to the verified principal
// (passkey.ScopeMsgID), so no caller can occupy another's ids.
func (s *Endpoints) forward(op passkey.Op) micro.HandlerFunc {
	return func(req micro.Request) {
		ctx, span := s.startSpan(req, op)
		in := command.Header(req.Headers())
		gotOp, userID, err := passkey.ParseSubject(partition.EndpointPrefix, req.Subject())
		if err == nil && gotOp != op {
			err = passkey.ErrWrongOperation
		}
		if err == nil && len(req.Data()) > passkey.MaxBodySize {
			err = passkey.ErrBodyTooLarge
		}
		msgIDs := in[command.HeaderMsgID] // exactly as JetStream matches it
		if err == nil {
			err = command.CheckMsgIDs(msgIDs, passkey.MaxScopedMsgIDLen)
		}
		var principal passkey.Principal
		if err == nil {
			principal, err = s.verify(in)
		}
		var msgID string
		if err == nil && len(msgIDs) == 1 {
			msgID = passkey.ScopeMsgID(principal.Issuer, principal.Subject, msgIDs[0])
			err = passkey.ValidateMsgID(msgID, passkey.MaxScopedMsgIDLen)
		}
		if err != nil {
			endSpan(span, err)
			s.respondError(req, err)
			return
		}
		subject := partition.CommandSubject(string(op), userID)
		msg := nats.NewMsg(subject)
		msg.Data = req.Data()
		for k, v := range in {
			if strings.EqualFold(k, command.HeaderAuthorization) || strings.EqualFold(k, command.HeaderContentType) {
				msg.Header[k] = v
			}
		}
		if msgID != "" {
			msg.Header.Set(command.HeaderMsgID, msgID)
		}
		if req.Reply() != "" {
			msg.Header.Set(command.HeaderReplyTo, req.Reply())
		}
		if span.IsRecording() {
			traceprop.Inject(ctx, msg.Header) // the command's apply is this span's child
		} else {
			parent, state := traceprop.Of(nats.Header(in))
			traceprop.Set(msg.Header, parent, state)
		}
		future, err := s.JS.PublishMsgAsync(msg)
		if err != nil {
			s.Log.Error().Err(err).Str("subject", subject).Msg("forward: publish")
			endSpan(span, passkey.ErrStreamUnavailable)
			s.respondError(req, passkey.ErrStreamUnavailable)
			return
		}
		go s.awaitPubAck(req, span, future, msg, userID, msgID, principal)
	}
}

// endSpan ends a request's span with the error that answered it, if any.
func endSpan(span trace.Span, err error) {
	if err != nil {
		e := passkey.AsError(err)
		span.SetAttributes(attribute.String("passkeys.error_id", e.ID))
		span.SetStatus(codes.Error, e.ID)
	}
	span.End()
}

// awaitPubAck answers a forwarded request that JetStream took as a
// duplicate, or could not store; the others are answered by the consumer.
func (s *Endpoints) awaitPubAck(req micro.Request, span trace.Span, future jetstream.PubAckFuture, msg *nats.Msg, userID, msgID string,
	p passkey.Principal) {
	defer span.End()
	subject := msg.Subject
	select {
	case ack := <-future.Ok():
		span.SetAttributes(attribute.Int64("messaging.nats.stream_seq", int64(ack.Sequence)), attribute.Bool("passkeys.duplicate", ack.Duplicate))
		if ack.Duplicate && msgID != "" {
			// JetStream dropped the repeat: the original's outcome is the
			// answer, unless the original was another command. Only here
			// is a command fingerprinted outside the applier, which never
			// sees this one.
			fingerprint := passkey.Fingerprint(subject, msg.Data, p.Issuer, p.Subject)
			if s.originalDiffers(ack.Sequence, subject, fingerprint) {
				respond(req, reply.Error(passkey.ErrMsgIDReused))
				return
			}
			s.answerRepeat(req, subject, userID, command.MsgIDKey(msgID), fingerprint)
		}
	case err := <-future.Err():
		s.Log.Error().Err(err).Str("subject", subject).Msg("forward: publish not acknowledged")
		s.respondError(req, passkey.ErrStreamUnavailable)
	}
}

// originalDiffers tells whether the stored command at seq, the one a
// duplicate's Nats-Msg-Id belongs to, is another command: another subject,
// body or principal (its token judged at its own stream time by the newest
// key set this worker read; where that set refuses its key, a rotation
// since may be why, and the outcome lookup decides). Outcomes are kept per user, so another user's
// command would never show its outcome here: the wait would end in
// OUTCOME-UNAVAILABLE instead of the answer that the Nats-Msg-Id was
// reused. When the stream cannot say, the outcome lookup decides, as it
// would without this check.
func (s *Endpoints) originalDiffers(seq uint64, subject string, fingerprint []byte) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	orig, err := s.Reader.Get(ctx, seq)
	if err == nil {
		origSubject := orig.Subject // as published, when stored before the stream was partitioned
		if _, o, err := partition.Original(orig.Subject); err == nil {
			origSubject = o
		}
		keys := s.Keys()
		if origSubject != subject || keys == nil {
			return origSubject != subject
		}
		p, err := s.Verifier.Verify(command.Header(orig.Header).ValuesFold(command.HeaderAuthorization), orig.Time, keys)
		if keyRefusal(err) {
			// Its key may have been retired since: only the key set in
			// force at the original, in its partition, can tell its
			// principal, so the outcome lookup decides.
			return false
		}
		return !bytes.Equal(passkey.Fingerprint(origSubject, orig.Data, p.Issuer, p.Subject), fingerprint)
	}
	s.Log.Warn().Err(err).Uint64("stream_seq", seq).Msg("duplicate: could not read the original command")
	return false
}

// answerRepeat answers a duplicate with the stored outcome of the original,
// waiting for it (up to OutcomeWait) while the original is still being
// processed.
func (s *Endpoints) answerRepeat(req micro.Request, subject, userID string, key, fingerprint []byte) {
	if req.Reply() == "" {
		return
	}
	held, p, local := s.Router.Local(userID)
	if local {
		if reply := s.storedAnswer(held.Store, subject, userID, key, fingerprint); held.Valid() {
			respond(req, reply)
			return
		}
	}
	body, _ := json.Marshal(outcomeQuery{Subject: subject, Key: key, Fingerprint: fingerprint})
	s.askHolder(req, p, "outcome", userID, nil, body)
}

// storedAnswer is the reply a repeat gets from the store of the user's
// partition: the original's outcome, once it has one.
func (s *Endpoints) storedAnswer(store *storage.Store, subject, userID string, key, fingerprint []byte) reply.Wire {
	ctx, cancel := context.WithTimeout(context.Background(), s.OutcomeWait)
	defer cancel()
	// The expiry is judged by the clock a token is; by this machine's where
	// that cannot be read (the expiry is days away, and a repeat comes
	// within the duplicate window of its original).
	at, err := s.now(ctx, 2*time.Second)
	if err != nil {
		at = clock.Wall()
	}
	out, err := retry.Do(ctx, outcomePoll, func() (*storage.Outcome, error) {
		var out *storage.Outcome
		err := store.View(func(tx *storage.Tx) error {
			var err error
			out, err = command.StoredOutcome(tx, userID, key, at)
			return err
		})
		switch {
		case err != nil:
			return nil, retry.Permanent(err)
		case out == nil:
			return nil, errNotProcessedYet
		}
		return out, nil
	}, nil)
	switch {
	case errors.Is(err, errNotProcessedYet) || errors.Is(err, context.DeadlineExceeded):
		return reply.Error(passkey.ErrOutcomeUnavailable)
	case err != nil:
		s.Log.Error().Err(err).Str("user_id", userID).Msg("read outcome")
		return reply.Error(passkey.ErrInternal)
	case !command.SameCommand(out, subject, fingerprint):
		return reply.Error(passkey.ErrMsgIDReused)
	default:
		return reply.Render(out.Answer)
	}
}

// outcomePoll is how often a repeat looks for its original's outcome: soon
// at first (the original is usually a batch away), then every 100 ms.
var outcomePoll = retry.Policy{First: 2 * time.Millisecond, Factor: 2, Max: 100 * time.Millisecond}

// errNotProcessedYet is a repeat's original not yet processed.
var errNotProcessedYet = errors.New("the original command has no outcome yet")

// list answers from the store; the token is judged at the time of the request.
func (s *Endpoints) list(req micro.Request) {
	_, userID, err := passkey.ParseSubject(partition.EndpointPrefix, req.Subject())
	if err != nil {
		s.respondError(req, err)
		return
	}
	h := command.Header(req.Headers())
	p, err := s.verify(h)
	if err != nil {
		s.respondError(req, err)
		return
	}
	held, part, local := s.Router.Local(userID)
	if local {
		if reply := s.listFrom(held.Store, p, userID); held.Valid() {
			respond(req, reply)
			return
		}
	}
	s.askHolder(req, part, "list", userID, nats.Header{command.HeaderAuthorization: h.ValuesFold(command.HeaderAuthorization)}, nil)
}

// listFrom is the list reply for principal p from the store of userID's
// partition.
func (s *Endpoints) listFrom(store *storage.Store, p passkey.Principal, userID string) reply.Wire {
	var r reply.Wire
	err := store.View(func(tx *storage.Tx) error {
		u, err := tx.User(userID)
		if err != nil {
			return err
		}
		keys, err := passkey.ListPasskeys(p, userID, u)
		if err != nil {
			r = reply.Error(passkey.AsError(err))
			return nil
		}
		r = reply.List(u, keys)
		return nil
	})
	if err != nil {
		s.Log.Error().Err(err).Str("user_id", userID).Msg("list: read store")
		return reply.Error(passkey.ErrInternal)
	}
	return r
}

func (s *Endpoints) replay(req micro.Request) {
	p, err := s.verify(command.Header(req.Headers()))
	if err != nil {
		s.respondError(req, err)
		return
	}
	if !p.System {
		s.respondError(req, passkey.ErrDeniedReplay)
		return
	}
	var r handler.ReplayRange
	if err := passkey.DecodeStrict(req.Data(), &r); err != nil || r.FromSeq == 0 || r.ToSeq < r.FromSeq || (r.UserID != "" && passkey.ValidateUserID(r.UserID) != nil) {
		s.respondError(req, passkey.ErrReplayInvalid)
		return
	}
	s.Log.Warn().Str("principal", p.Subject).Uint64("from_seq", r.FromSeq).Uint64("to_seq", r.ToSeq).Str("user_id", r.UserID).Msg("replay requested")
	rep, err := s.Replayer(context.Background(), r)
	if err != nil {
		s.respondError(req, fmt.Errorf("replay: %w", err))
		return
	}
	s.Log.Warn().Interface("report", rep).Msg("replay done")
	body, _ := json.Marshal(rep)
	respond(req, reply.Wire{Body: body})
}
