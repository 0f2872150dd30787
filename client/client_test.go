package client_test

import (
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/passkeys/worker/client"
	"github.com/passkeys/worker/internal/testenv"
)

// fakeWorker answers passkeys.*.* with the replies a test scripts, in
// order (nil: no answer), and records what it was asked. It stands in for
// the worker where a test needs answers a worker gives only under faults.
type fakeWorker struct {
	mu      sync.Mutex
	replies []*nats.Msg
	asked   []*nats.Msg
}

func startFake(t *testing.T, replies ...*nats.Msg) (*fakeWorker, *nats.Conn) {
	t.Helper()
	ns := testenv.StartNATS(t)
	f := &fakeWorker{replies: replies}
	srv := testenv.Connect(t, ns.ClientURL())
	if _, err := srv.Subscribe("passkeys.*.*", f.answer); err != nil {
		t.Fatal(err)
	}
	if err := srv.Flush(); err != nil {
		t.Fatal(err)
	}
	return f, testenv.Connect(t, ns.ClientURL())
}

func (f *fakeWorker) answer(m *nats.Msg) {
	f.mu.Lock()
	n := len(f.asked)
	f.asked = append(f.asked, m)
	var r *nats.Msg
	if n < len(f.replies) {
		r = f.replies[n]
	} else if len(f.replies) > 0 {
		r = f.replies[len(f.replies)-1]
	}
	f.mu.Unlock()
	if r != nil {
		_ = m.RespondMsg(&nats.Msg{Subject: m.Reply, Header: r.Header, Data: r.Data})
	}
}

func (f *fakeWorker) requests() []*nats.Msg {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.asked)
}

func errorReply(code, http int, id, msg string) *nats.Msg {
	h := nats.Header{}
	h.Set("Nats-Service-Error-Code", strconv.Itoa(http))
	h.Set("Nats-Service-Error", msg+" ("+id+")")
	body := `{"code":` + strconv.Itoa(code) + `,"message":"` + msg + ` (` + id + `)","details":[{"@type":"type.googleapis.com/zitadel.v1.ErrorDetail","id":"` + id + `","message":"` + msg + `"}]}`
	return &nats.Msg{Header: h, Data: []byte(body)}
}

const details = `{"details":{"sequence":"3","creationDate":"2026-11-27T10:00:00.123456Z","changeDate":"2026-11-27T10:05:00.654321Z","resourceOwner":"org1"}}`

var (
	success     = &nats.Msg{Data: []byte(details)}
	unavailable = errorReply(14, 503, "PARTITION-UNAVAILABLE", "no worker serves this user's partition at the moment; try again shortly")
)

func wantDetails(t *testing.T, d client.Details) {
	t.Helper()
	want := client.Details{Sequence: 3, ResourceOwner: "org1",
		CreationDate: time.Date(2026, 11, 27, 10, 0, 0, 123456000, time.UTC),
		ChangeDate:   time.Date(2026, 11, 27, 10, 5, 0, 654321000, time.UTC)}
	if d != want {
		t.Fatalf("details %+v, want %+v", d, want)
	}
}

// sameMsgID checks every request carried one Nats-Msg-Id, and returns it.
func sameMsgID(t *testing.T, reqs []*nats.Msg, n int) string {
	t.Helper()
	if len(reqs) != n {
		t.Fatalf("%d requests, want %d", len(reqs), n)
	}
	id := reqs[0].Header.Get(nats.MsgIdHdr)
	for i, r := range reqs {
		if got := r.Header.Values(nats.MsgIdHdr); len(got) != 1 || got[0] != id || id == "" {
			t.Fatalf("request %d has Nats-Msg-Id %q, want %q like the first", i, got, id)
		}
		if string(r.Data) != string(reqs[0].Data) {
			t.Fatalf("request %d has body %s, the first %s", i, r.Data, reqs[0].Data)
		}
	}
	return id
}

// An UNAVAILABLE answer is asked again with the same Nats-Msg-Id and body
// until another answer comes.
func TestRetriesUnavailableWithTheSameMsgID(t *testing.T) {
	f, nc := startFake(t, unavailable, unavailable, success)
	d, err := client.New(nc, client.WithToken("tok")).Remove(context.Background(), "u1", "pk-1", client.Force())
	if err != nil {
		t.Fatal(err)
	}
	wantDetails(t, d)
	reqs := f.requests()
	if id := sameMsgID(t, reqs, 3); !strings.HasPrefix(id, "client-") {
		t.Errorf("made-up Nats-Msg-Id %q", id)
	}
	if got, want := string(reqs[0].Data), `{"tokenId":"pk-1","force":true}`; got != want {
		t.Errorf("body %s, want %s", got, want)
	}
	if got := reqs[0].Header.Get("Authorization"); got != "Bearer tok" {
		t.Errorf("Authorization %q", got)
	}
}

// A request with no reply within the attempt's wait is asked again with the
// caller's Nats-Msg-Id.
func TestRetriesATimeoutWithTheCallersMsgID(t *testing.T) {
	f, nc := startFake(t, nil, success)
	c := client.New(nc, client.WithToken("tok"), client.WithAttemptTimeout(50*time.Millisecond))
	d, err := c.Remove(context.Background(), "u1", "pk-1", client.MsgID("incident-42"))
	if err != nil {
		t.Fatal(err)
	}
	wantDetails(t, d)
	if id := sameMsgID(t, f.requests(), 2); id != "incident-42" {
		t.Errorf("Nats-Msg-Id %q, want the caller's", id)
	}
}

// A definitive answer ends the call at once, even an INTERNAL one: it is
// the stored outcome, and asking again would get it again.
func TestDefinitiveAnswersAreNotRetried(t *testing.T) {
	for _, tt := range []struct {
		name  string
		reply *nats.Msg
		want  error
		code  int
	}{
		{"LastPasskey", errorReply(9, 400, "PASSKEY-LAST", "the passkey is the user's last way to log in"), client.ErrLastPasskey, 9},
		{"Internal", errorReply(13, 500, "INTERNAL", "internal error"), client.ErrInternal, 13},
		{"UnknownID", errorReply(5, 404, "SOMETHING-NEW", "an id this client does not know"), nil, 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, nc := startFake(t, tt.reply, success)
			var raw []byte
			_, err := client.New(nc).Remove(context.Background(), "u1", "pk-1", client.ReplyBody(&raw))
			var e *client.Error
			if !errors.As(err, &e) || e.Code != tt.code || e.HTTPStatus == 0 {
				t.Fatalf("err %v, want an *Error with code %d", err, tt.code)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("err %v is not %v", err, tt.want)
			}
			if errors.Is(err, client.ErrPasskeyNotFound) || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err %v matches what it is not", err)
			}
			if string(raw) != string(tt.reply.Data) {
				t.Errorf("ReplyBody %s, want %s", raw, tt.reply.Data)
			}
			if n := len(f.requests()); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
		})
	}
}

// A reply the client cannot read is an error quoting its start, never a
// guess, and is not asked again.
func TestUnreadableRepliesAreErrors(t *testing.T) {
	long := `{"details":{"sequence":"three"` + strings.Repeat(" ", 200) + `}}`
	for _, tt := range []struct {
		name  string
		reply *nats.Msg
		quote string
	}{
		{"NotJSON", &nats.Msg{Data: []byte("<html>gateway</html>")}, "<html>gateway</html>"},
		{"BadSequence", &nats.Msg{Data: []byte(long)}, `{\"details\":{\"sequence\":\"three\"`},
		{"ErrorWithoutID", &nats.Msg{Header: nats.Header{"Nats-Service-Error-Code": {"400"}}, Data: []byte(`{"code":3,"message":"x"}`)}, `{\"code\":3`},
		{"NoDetails", &nats.Msg{Data: []byte(`{"result":[]}`)}, `{\"result\":[]}`},
		{"LocalTime", &nats.Msg{Data: []byte(strings.Replace(details, "123456Z", "123456+05:00", 1))}, `{\"details\"`},
		{"LeadingZero", &nats.Msg{Data: []byte(strings.Replace(details, `"3"`, `"03"`, 1))}, `{\"details\"`},
		{"StatusAndCodeDisagree", &nats.Msg{Header: nats.Header{"Nats-Service-Error-Code": {"200"}}, Data: unavailable.Data}, `{\"code\":14`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, nc := startFake(t, tt.reply)
			_, err := client.New(nc).Remove(context.Background(), "u1", "pk-1")
			if !errors.Is(err, client.ErrBadReply) || !strings.Contains(err.Error(), tt.quote) {
				t.Fatalf("err %v, want ErrBadReply quoting %s", err, tt.quote)
			}
			if len(err.Error()) > 250 {
				t.Errorf("the error quotes too much: %d bytes", len(err.Error()))
			}
			if n := len(f.requests()); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
		})
	}
}

// A context that ends while the client is still asking ends the call with
// the context's error, and says what the last attempt got.
func TestContextEndsMidRetry(t *testing.T) {
	f, nc := startFake(t, unavailable)
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	_, err := client.New(nc).Remove(ctx, "u1", "pk-1")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "PARTITION-UNAVAILABLE") {
		t.Fatalf("err %v, want the deadline and the last answer", err)
	}
	if errors.Is(err, client.ErrPartitionUnavailable) {
		t.Errorf("err %v: the last attempt's answer is said, not wrapped", err)
	}
	sameMsgID(t, f.requests(), len(f.requests()))
	if n := len(f.requests()); n < 2 {
		t.Errorf("%d requests before the context ended, want at least 2", n)
	}
}

// A user id that cannot be a subject token is refused before anything is
// sent (it would reach no endpoint, and the call would wait for nothing).
func TestBadUserIDIsRefusedLocally(t *testing.T) {
	f, nc := startFake(t, success)
	c := client.New(nc)
	for _, id := range []string{"", "a.b", "a*", "a>", "a b", strings.Repeat("x", 201), "a\x00"} {
		_, err := c.Remove(context.Background(), id, "pk-1")
		var e *client.Error
		if !errors.Is(err, client.ErrSubjectInvalid) || !errors.As(err, &e) || e.Code != 3 {
			t.Errorf("user id %q: err %v, want REQUEST-SUBJECT-INVALID", id, err)
		}
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("%d requests sent", n)
	}
}

// List is read exactly; it carries no Nats-Msg-Id.
func TestListReply(t *testing.T) {
	body := `{"details":{"totalResult":"2","processedSequence":"7","timestamp":"2026-11-27T10:05:00.654321Z"},"result":[{"id":"pk-1","name":"YubiKey 5","state":"AUTH_FACTOR_STATE_READY"},{"id":"pk-2","name":"","state":"AUTH_FACTOR_STATE_NOT_READY"}]}`
	f, nc := startFake(t, &nats.Msg{Data: []byte(body)})
	l, err := client.New(nc).List(context.Background(), "u1")
	if err != nil {
		t.Fatal(err)
	}
	want := client.List{ProcessedSequence: 7, Timestamp: time.Date(2026, 11, 27, 10, 5, 0, 654321000, time.UTC),
		Passkeys: []client.Passkey{{ID: "pk-1", Name: "YubiKey 5", State: client.StateReady}, {ID: "pk-2", State: client.StateNotReady}}}
	if !reflect.DeepEqual(l, want) {
		t.Fatalf("list %+v, want %+v", l, want)
	}
	if r := f.requests()[0]; r.Header.Get(nats.MsgIdHdr) != "" || r.Subject != "passkeys.list.u1" {
		t.Errorf("list request %s with Nats-Msg-Id %q", r.Subject, r.Header.Get(nats.MsgIdHdr))
	}
}

// A call is a client span, and its attempts carry its trace context.
func TestCallSpanAndTraceparent(t *testing.T) {
	f, nc := startFake(t, unavailable, success)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	if _, err := client.New(nc, client.WithTracerProvider(tp), client.WithToken("secret-token")).Remove(context.Background(), "u1", "pk-1"); err != nil {
		t.Fatal(err)
	}
	spans := rec.Ended()
	if len(spans) != 1 || spans[0].Name() != "passkeys.remove" {
		t.Fatalf("spans %v, want one passkeys.remove", spans)
	}
	tid := spans[0].SpanContext().TraceID().String()
	for i, r := range f.requests() {
		if tp := r.Header.Get("traceparent"); !strings.Contains(tp, tid) {
			t.Errorf("request %d traceparent %q, want trace %s", i, tp, tid)
		}
	}
	for _, a := range spans[0].Attributes() {
		if strings.Contains(a.Value.String(), "secret-token") {
			t.Errorf("span attribute %s holds the token", a.Key)
		}
	}
}

// Every error id the worker answers with (passkey/errors.go's ID constants)
// has its sentinel here, with the same code the docs give.
func TestOneSentinelPerErrorID(t *testing.T) {
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, "../passkey/errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	ast.Inspect(file, func(n ast.Node) bool {
		if v, ok := n.(*ast.ValueSpec); ok && len(v.Values) == 1 && strings.HasPrefix(v.Names[0].Name, "ID") {
			if lit, ok := v.Values[0].(*ast.BasicLit); ok {
				s, _ := strconv.Unquote(lit.Value)
				ids = append(ids, s)
			}
		}
		return true
	})
	known := map[string]bool{}
	for _, s := range client.Sentinels() {
		known[s.ID] = true
	}
	if len(ids) < 30 {
		t.Fatalf("found only %d ids in passkey/errors.go", len(ids))
	}
	for _, id := range ids {
		if !known[id] {
			t.Errorf("no sentinel for %s", id)
		}
	}
	if len(known) != len(ids) {
		t.Errorf("%d sentinels, %d ids", len(known), len(ids))
	}
}

// A token refused after an attempt whose fate is unknown (no reply in
// time) does not say the removal did not happen: the error wraps
// ErrOutcomeUnknown beside the refusal. Refused at the first attempt, it
// is the refusal alone.
func TestRefusalAfterAnUnknownAttempt(t *testing.T) {
	expired := errorReply(16, 401, "AUTH-EXPIRED", "the token had expired when the command was sent")
	f, nc := startFake(t, nil, expired)
	_, err := client.New(nc, client.WithAttemptTimeout(50*time.Millisecond)).Remove(context.Background(), "u1", "pk-1")
	var e *client.Error
	if !errors.Is(err, client.ErrOutcomeUnknown) || !errors.As(err, &e) || e.ID != "AUTH-EXPIRED" {
		t.Fatalf("err %v, want ErrOutcomeUnknown beside AUTH-EXPIRED", err)
	}
	sameMsgID(t, f.requests(), 2)

	_, nc = startFake(t, expired)
	if _, err := client.New(nc).Remove(context.Background(), "u1", "pk-1"); errors.Is(err, client.ErrOutcomeUnknown) || !errors.Is(err, client.ErrAuthExpired) {
		t.Fatalf("refused at once: %v", err)
	}
}

// Timeouts of zero or less are the defaults, not a loop that never waits.
func TestZeroTimeoutsAreDefaults(t *testing.T) {
	f, nc := startFake(t, success)
	if _, err := client.New(nc, client.WithAttemptTimeout(0), client.WithTimeout(-time.Second)).Remove(context.Background(), "u1", "pk-1"); err != nil {
		t.Fatal(err)
	}
	if n := len(f.requests()); n != 1 {
		t.Errorf("%d requests", n)
	}
}
