package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/passkeys/worker/app"
	"github.com/passkeys/worker/client"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/internal/testenv/testworker"
)

// stack is a NATS server with JetStream, the test keys, and workers run in
// this process through app.Run, as a calling service would find them.
type stack struct {
	url  string
	keys *testenv.Keys
}

func newStack(t *testing.T) *stack {
	t.Helper()
	return &stack{url: testenv.StartNATS(t).ClientURL(), keys: testenv.NewKeys(t)}
}

// startWorker runs a worker on dir until stop (or the test's end), and
// returns once it serves.
func (s *stack) startWorker(t *testing.T, dir string, cfg ...func(*app.Config)) (stop func()) {
	t.Helper()
	c := testworker.Config(s.url, s.keys, dir)
	for _, f := range cfg {
		f(&c)
	}
	_, stop = testworker.Start(t, c)
	return stop
}

func (s *stack) token(t *testing.T, tok testenv.Token) string { return s.keys.Mint(t, tok) }

func (s *stack) system(t *testing.T) string {
	return s.token(t, testenv.Token{Subject: "ops", Scopes: []string{"passkeys:system"}})
}

func ready(ids ...string) []client.Passkey {
	var pks []client.Passkey
	for _, id := range ids {
		pks = append(pks, client.Passkey{ID: id, Name: "key " + id, State: client.StateReady})
	}
	return pks
}

// Every row of the contract's error table that a client can cause, through
// the client, against a real worker: the sentinel, the gRPC code and the
// HTTP status. (The table's last two rows, the store or JetStream failing,
// are answers a worker gives only under faults: TestRetriesUnavailable...
// and TestDefinitiveAnswersAreNotRetried read them from a stand-in, and the
// fault tests in cmd/worker make the worker give them.)
func TestErrorTableThroughTheClient(t *testing.T) {
	s := newStack(t)
	s.startWorker(t, t.TempDir())
	nc := testenv.Connect(t, s.url)
	ctx := context.Background()
	sys := client.New(nc, client.WithToken(s.system(t)))
	for _, u := range []client.User{
		{ID: "u1", ResourceOwner: "org1", Password: true, Passkeys: ready("pk-1", "pk-2")},
		{ID: "u2", ResourceOwner: "org1", Passkeys: ready("pk-only")},
	} {
		if _, err := sys.Sync(ctx, u); err != nil {
			t.Fatalf("sync %s: %v", u.ID, err)
		}
	}
	self := func(sub string) client.CallOption { return client.Token(s.token(t, testenv.Token{Subject: sub})) }
	admin2 := client.Token(s.token(t, testenv.Token{Subject: "a2", Org: "org2", Scopes: []string{"passkeys:admin"}}))
	other := testenv.NewKeys(t)
	hs256 := "eyJhbGciOiJIUzI1NiIsImtpZCI6IkVkRFNBIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl"
	past := time.Now().Add(-3 * time.Hour)

	for _, tt := range []struct {
		name string
		call func(*client.Client) error
		want error
		code int
		http int
	}{
		{"TokenIDTooLong", remove("u1", strings.Repeat("x", 201), self("u1")), client.ErrTokenIDTooLong, 3, 400},
		{"TokenIDMissing", remove("u1", "", self("u1")), client.ErrTokenIDMissing, 3, 400},
		{"BodyTooLarge", func(c *client.Client) error {
			_, err := c.Sync(ctx, client.User{ID: "u1", ResourceOwner: "org1", IDPLinks: []string{strings.Repeat("l", 70<<10)}})
			return err
		}, client.ErrBodyTooLarge, 3, 400},
		{"SubjectInvalid", remove("u.1", "pk-1", self("u1")), client.ErrSubjectInvalid, 3, 0},
		{"NoToken", remove("u1", "pk-1", client.Token("")), client.ErrAuthMissing, 16, 401},
		{"MalformedToken", remove("u1", "pk-1", client.Token("not-a-jwt")), client.ErrAuthMalformed, 16, 401},
		{"HMACToken", remove("u1", "pk-1", client.Token(hs256)), client.ErrAuthAlgorithm, 16, 401},
		{"BadSignature", remove("u1", "pk-1", client.Token(other.Mint(t, testenv.Token{Subject: "u1"}))), client.ErrAuthSignature, 16, 401},
		{"WrongIssuer", remove("u1", "pk-1", client.Token(s.token(t, testenv.Token{Subject: "u1", Issuer: "https://other"}))), client.ErrAuthIssuer, 16, 401},
		{"WrongAudience", remove("u1", "pk-1", client.Token(s.token(t, testenv.Token{Subject: "u1", Audience: "other"}))), client.ErrAuthAudience, 16, 401},
		{"Expired", remove("u1", "pk-1", client.Token(s.token(t, testenv.Token{Subject: "u1", Now: past, TTL: time.Minute}))), client.ErrAuthExpired, 16, 401},
		{"NotYetValid", remove("u1", "pk-1", client.Token(s.token(t, testenv.Token{Subject: "u1", Now: time.Now().Add(time.Hour)}))), client.ErrAuthNotYetValid, 16, 401},
		{"OtherUser", remove("u1", "pk-1", self("u2")), client.ErrDeniedUser, 7, 403},
		{"OtherOrganisation", remove("u1", "pk-1", admin2), client.ErrDeniedUser, 7, 403},
		{"ForceWithoutAdmin", remove("u1", "pk-1", self("u1"), client.Force()), client.ErrDeniedForce, 7, 403},
		{"SyncWithoutAdmin", func(c *client.Client) error {
			_, err := c.Sync(ctx, client.User{ID: "u1", ResourceOwner: "org1", Password: true}, self("u1"))
			return err
		}, client.ErrDeniedSync, 7, 403},
		{"UnknownUser", remove("nobody", "pk-1"), client.ErrUserNotFound, 5, 404},
		{"UnknownPasskey", remove("u1", "pk-9", self("u1")), client.ErrPasskeyNotFound, 5, 404},
		{"LastPasskey", remove("u2", "pk-only", self("u2")), client.ErrLastPasskey, 9, 400},
		{"OwnerImmutable", func(c *client.Client) error {
			_, err := c.Sync(ctx, client.User{ID: "u1", ResourceOwner: "org2", Password: true})
			return err
		}, client.ErrOwnerImmutable, 9, 400},
		{"ListOtherUser", func(c *client.Client) error {
			_, err := c.List(ctx, "u1", self("u2"))
			return err
		}, client.ErrDeniedUser, 7, 403},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(sys)
			var e *client.Error
			if !errors.Is(err, tt.want) || !errors.As(err, &e) || e.Code != tt.code || e.HTTPStatus != tt.http {
				t.Fatalf("err %v (%+v), want %v with code %d, HTTP %d", err, e, tt.want, tt.code, tt.http)
			}
		})
	}

	d, err := sys.Remove(ctx, "u1", "pk-1", self("u1"))
	if err != nil || d.Sequence != 2 || d.ResourceOwner != "org1" || d.ChangeDate.Before(d.CreationDate) {
		t.Fatalf("remove: %+v, %v", d, err)
	}
	l, err := sys.List(ctx, "u1", self("u1"))
	if err != nil || l.ProcessedSequence != 2 || len(l.Passkeys) != 1 || l.Passkeys[0] != ready("pk-2")[0] || !l.Timestamp.Equal(d.ChangeDate) {
		t.Fatalf("list: %+v, %v", l, err)
	}
}

func remove(userID, tokenID string, opts ...client.CallOption) func(*client.Client) error {
	return func(c *client.Client) error {
		_, err := c.Remove(context.Background(), userID, tokenID, opts...)
		return err
	}
}

// A removal asked while no worker runs is asked again until a worker is
// back, and applied once: the answer is the first change's, a repeat with
// the same id gets the same, and the user's sequence moved by one. A call
// whose context ends first changes nothing.
func TestRetryAcrossWorkerRestart(t *testing.T) {
	s := newStack(t)
	dir := t.TempDir()
	stop := s.startWorker(t, dir)
	nc := testenv.Connect(t, s.url)
	ctx := context.Background()
	c := client.New(nc, client.WithToken(s.system(t)), client.WithAttemptTimeout(200*time.Millisecond))
	if _, err := c.Sync(ctx, client.User{ID: "u1", ResourceOwner: "org1", Password: true, Passkeys: ready("pk-1", "pk-2")}); err != nil {
		t.Fatal(err)
	}
	stop()

	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := c.Remove(short, "u1", "pk-2"); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no worker") {
		t.Fatalf("with no worker and a short context: %v", err)
	}

	// Watch the attempts from outside, as another subscriber of the
	// endpoint's subject (which also makes them time out instead of finding
	// no responders: both are retried).
	watcher := testenv.Connect(t, s.url)
	attempts := make(chan *nats.Msg, 1000)
	if _, err := watcher.ChanSubscribe("passkeys.remove.u1", attempts); err != nil {
		t.Fatal(err)
	}
	if err := watcher.Flush(); err != nil {
		t.Fatal(err)
	}
	type result struct {
		d   client.Details
		err error
	}
	done := make(chan result, 1)
	go func() {
		long, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		d, err := c.Remove(long, "u1", "pk-1", client.MsgID("restart-1"))
		done <- result{d, err}
	}()
	first := <-attempts
	s.startWorker(t, dir)
	r := <-done
	if r.err != nil || r.d.Sequence != 2 {
		t.Fatalf("after the restart: %+v, %v", r.d, r.err)
	}
	if n := len(attempts) + 1; n < 2 {
		t.Errorf("%d attempts seen, want several", n)
	}
	for len(attempts) > 0 {
		if m := <-attempts; m.Header.Get(nats.MsgIdHdr) != first.Header.Get(nats.MsgIdHdr) {
			t.Fatalf("an attempt with Nats-Msg-Id %q, the first had %q", m.Header.Get(nats.MsgIdHdr), first.Header.Get(nats.MsgIdHdr))
		}
	}
	again, err := c.Remove(ctx, "u1", "pk-1", client.MsgID("restart-1"))
	if err != nil || again != r.d {
		t.Fatalf("the repeat: %+v, %v; the first answer %+v", again, err, r.d)
	}
	l, err := c.List(ctx, "u1")
	if err != nil || l.ProcessedSequence != 2 || len(l.Passkeys) != 1 || l.Passkeys[0].ID != "pk-2" {
		t.Fatalf("list after: %+v, %v", l, err)
	}
}
