package client

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/passkeys/worker/internal/traceprop"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
)

// Client calls the passkeys worker over one NATS connection. It is safe for
// concurrent use.
type Client struct {
	nc      *nats.Conn
	token   string
	attempt time.Duration
	timeout time.Duration
	tracer  trace.Tracer
}

// Option sets up a Client.
type Option func(*Client)

// WithToken is the bearer token (a JWT) of every call that gives no Token.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithAttemptTimeout is how long the first attempt of a call waits for its
// reply before asking again (2 s unless set, or set to 0 or less); each next
// attempt waits about twice as long as the first (give or take a quarter):
// a request sent while no worker could take it (a failover, a NATS node
// down) gets no reply at all, and is asked again that much after the
// service is back at most.
func WithAttemptTimeout(d time.Duration) Option { return func(c *Client) { c.attempt = d } }

// WithTimeout bounds a call whose context has no deadline (30 s unless
// set, or set to 0 or less).
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithTracerProvider is where the calls' spans go (otel's global provider
// unless set).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *Client) { c.tracer = tp.Tracer(tracerName) }
}

const tracerName = "github.com/passkeys/worker/client"

// New returns a client that calls the worker over nc.
func New(nc *nats.Conn, opts ...Option) *Client {
	c := &Client{nc: nc}
	for _, o := range opts {
		o(c)
	}
	if c.attempt <= 0 {
		c.attempt = 2 * time.Second
	}
	if c.timeout <= 0 {
		c.timeout = 30 * time.Second
	}
	if c.tracer == nil {
		c.tracer = otel.GetTracerProvider().Tracer(tracerName)
	}
	return c
}

// CallOption changes one call.
type CallOption func(*call)

type call struct {
	force    bool
	msgID    string
	token    *string
	body     *[]byte
	attempts int
}

// Force skips the last-login-method check of a removal (administrators only).
func Force() CallOption { return func(c *call) { c.force = true } }

// MsgID is the call's Nats-Msg-Id, its idempotency key: the same id with
// the same request gets the first reply and changes nothing, also from
// another process or days later (within the worker's outcome retention).
// Without it the client makes one up per call.
func MsgID(id string) CallOption { return func(c *call) { c.msgID = id } }

// Token is this call's bearer token, instead of WithToken's.
func Token(token string) CallOption { return func(c *call) { c.token = &token } }

// ReplyBody stores the body of the reply that ended the call (success or
// refusal) in *dst, byte for byte, for a caller that logs or forwards it.
func ReplyBody(dst *[]byte) CallOption { return func(c *call) { c.body = dst } }

// Remove removes passkey tokenID of user userID and returns what the change
// did. Errors: an *Error for a refusal (ErrLastPasskey, ErrPasskeyNotFound,
// ErrDeniedUser, ErrAuth..., see the sentinels), ErrBadReply, or the
// context's error once it ends, retries included (see the package doc).
func (c *Client) Remove(ctx context.Context, userID, tokenID string, opts ...CallOption) (Details, error) {
	cl := options(opts)
	body, _ := json.Marshal(removeBody{TokenID: tokenID, Force: cl.force}) // strings and a bool always encode
	m, err := c.do(ctx, "remove", userID, body, cl)
	if err != nil {
		return Details{}, err
	}
	return readDetails(m.Data)
}

// Sync sets user u's whole login-method snapshot (administrators only),
// creating the user if new, and returns what the change did. Errors: as
// Remove's, with ErrOwnerImmutable, ErrSyncInvalid and ErrDeniedSync.
func (c *Client) Sync(ctx context.Context, u User, opts ...CallOption) (Details, error) {
	cl := options(opts)
	body, err := json.Marshal(u)
	if err != nil {
		return Details{}, fmt.Errorf("passkeys: sync %s: %w", u.ID, err)
	}
	m, err := c.do(ctx, "sync", u.ID, body, cl)
	if err != nil {
		return Details{}, err
	}
	return readDetails(m.Data)
}

// List returns user userID's passkeys, read from the store of the worker
// that serves the user. Errors: as Remove's.
func (c *Client) List(ctx context.Context, userID string, opts ...CallOption) (List, error) {
	m, err := c.do(ctx, "list", userID, nil, options(opts))
	if err != nil {
		return List{}, err
	}
	return readList(m.Data)
}

func options(opts []CallOption) *call {
	cl := &call{}
	for _, o := range opts {
		o(cl)
	}
	return cl
}

// do sends one request until it has an answer that asking again would not
// change, or ctx ends (the package doc's retry policy).
func (c *Client) do(ctx context.Context, op, userID string, body []byte, cl *call) (m *nats.Msg, err error) {
	if err := passkey.ValidateUserID(userID); err != nil {
		// The worker's own check and refusal: such a subject reaches no endpoint.
		e := passkey.AsError(err)
		return nil, &Error{Code: int(e.Code), ID: e.ID, Message: e.Message}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	subject := partition.EndpointSubject(op, userID)
	ctx, span := c.tracer.Start(ctx, "passkeys."+op, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", subject), attribute.String("passkeys.user_id", userID)))
	defer func() { endSpan(span, cl.attempts, err) }()
	return c.ask(ctx, op, userID, subject, body, cl)
}

// ask is do's loop of attempts, under ctx's deadline.
func (c *Client) ask(ctx context.Context, op, userID, subject string, body []byte, cl *call) (*nats.Msg, error) {
	msgID := cl.msgID
	if msgID == "" && op != "list" {
		msgID = newMsgID()
	}
	token := c.token
	if cl.token != nil {
		token = *cl.token
	}
	wait, pause := c.attempt, firstPause
	var last error
	// uncertain: an earlier attempt may have been stored (its reply did not
	// come, or its outcome was not there yet).
	uncertain := false
	for {
		cl.attempts++
		actx, cancel := context.WithTimeout(ctx, wait)
		m, err := c.nc.RequestMsgWithContext(actx, request(ctx, subject, body, token, msgID))
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil, ended(ctx, op, userID, last, err)
		case errors.Is(err, context.DeadlineExceeded):
			last, wait, uncertain = fmt.Errorf("no reply within %v", wait), c.nextWait(), msgID != ""
			continue // the attempt's wait ended: the worker may be taking over; ask again at once
		case errors.Is(err, nats.ErrNoResponders):
			last = errors.New("no worker listening")
		case err != nil:
			return nil, fmt.Errorf("passkeys: %s %s: %w", op, userID, err)
		case m.Header.Get(micro.ErrorCodeHeader) == "":
			keep(cl, m)
			return m, nil
		default:
			err = readError(m)
			var e *Error
			if !errors.As(err, &e) || !e.Unavailable() {
				keep(cl, m)
				if uncertain && e != nil && e.Code == int(passkey.CodeUnauthenticated) {
					// The endpoint judges the token before it looks for the
					// outcome: by now it may have expired, or its key been
					// retired, while an earlier attempt was applied.
					return nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
				}
				return nil, err
			}
			last = err
			uncertain = uncertain || (msgID != "" && (e.ID == ErrOutcomeUnavailable.ID || e.ID == ErrPartitionUnavailable.ID))
		}
		if !sleep(ctx, pause) {
			return nil, ended(ctx, op, userID, last, nil)
		}
		pause = min(2*pause, maxPause)
	}
}

// nextWait is how long an attempt after one that got no reply waits: twice
// the first attempt's, give or take a quarter, so that the callers that
// waited through one outage do not all ask again at the same moments.
func (c *Client) nextWait() time.Duration {
	return 3*c.attempt/2 + time.Duration(rand.Int64N(int64(c.attempt)+1))
}

// Pauses between attempts after an UNAVAILABLE answer or no responders.
const (
	firstPause = 50 * time.Millisecond
	maxPause   = 2 * time.Second
)

// request is one attempt's message: a new one each time, as a request's
// reply subject is its own.
func request(ctx context.Context, subject string, body []byte, token, msgID string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = body
	if token != "" {
		m.Header.Set("Authorization", "Bearer "+strings.TrimPrefix(token, "Bearer "))
	}
	if body != nil {
		m.Header.Set("Content-Type", "application/json")
	}
	if msgID != "" {
		m.Header.Set(nats.MsgIdHdr, msgID)
	}
	traceprop.Inject(ctx, m.Header)
	return m
}

func keep(cl *call, m *nats.Msg) {
	if cl.body != nil {
		*cl.body = m.Data
	}
}

// ended is the error of a call whose context ended: its cause, and what
// the last attempt got.
func ended(ctx context.Context, op, userID string, last, err error) error {
	if last == nil {
		last = err
	}
	if last == nil {
		return fmt.Errorf("passkeys: %s %s: %w", op, userID, context.Cause(ctx))
	}
	return fmt.Errorf("passkeys: %s %s: %w (the last attempt: %v)", op, userID, context.Cause(ctx), last)
}

// sleep waits d, with a fifth of it as jitter, unless ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	d += time.Duration(rand.Int64N(int64(d)/5 + 1))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func endSpan(span trace.Span, attempts int, err error) {
	span.SetAttributes(attribute.Int("passkeys.attempts", attempts))
	var e *Error
	switch {
	case errors.As(err, &e):
		span.SetAttributes(attribute.String("passkeys.error_id", e.ID))
		span.SetStatus(codes.Error, e.ID)
	case err != nil:
		span.SetStatus(codes.Error, "no answer") // the error may quote a reply's bytes
	}
	span.End()
}

// newMsgID is a Nats-Msg-Id no other call has: 128 random bits.
func newMsgID() string {
	var b [16]byte
	_, _ = cryptorand.Read(b[:]) // never fails (crypto/rand's contract since Go 1.24)
	return "client-" + hex.EncodeToString(b[:])
}
