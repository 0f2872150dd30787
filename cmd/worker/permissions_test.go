package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
)

// permissionErrors connects as one of nats.conf's users and collects the
// permission violations the server reports to it.
type permissionErrors struct {
	nc   *nats.Conn
	errs chan error
}

func connectAs(t *testing.T, ns *server.Server, user, password string) *permissionErrors {
	t.Helper()
	p := &permissionErrors{errs: make(chan error, 100)}
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(user, password),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { p.errs <- err }))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	p.nc = nc
	return p
}

// denied runs action and waits for the server to refuse subject to it.
func (p *permissionErrors) denied(t *testing.T, what, subject string, action func() error) {
	t.Helper()
	_ = action() // a request waits for no answer; the refusal comes asynchronously
	for {
		select {
		case err := <-p.errs:
			if strings.Contains(strings.ToLower(err.Error()), "permissions violation") && strings.Contains(err.Error(), subject) {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no permissions violation for %s", what, subject)
		}
	}
}

// The users of nats.conf may do their jobs and nothing else: a calling
// service removes and lists but may not sync, write into the stream or read
// it; an administrator may batch-publish but not purge; the worker itself
// may not purge or delete the stream, whatever a Reply-To asks of it.
func TestNATSPermissions(t *testing.T) {
	ns := testenv.StartNATSWithUsers(t, "../../nats.conf")
	passwords := map[string]string{"worker": testenv.Passwords["passkeys-worker"],
		"service": testenv.Passwords["passkeys-service"], "admin": testenv.Passwords["passkeys-admin"]}

	if _, err := nats.Connect(ns.ClientURL()); err == nil {
		t.Fatal("connected without a user")
	}
	operator := connectAs(t, ns, "passkeys-admin", passwords["admin"])
	service := connectAs(t, ns, "passkeys-service", passwords["service"])
	workerURL := strings.Replace(ns.ClientURL(), "nats://", "nats://passkeys-worker:"+passwords["worker"]+"@", 1)
	e := &env{url: workerURL, keys: testenv.NewKeys(t), dataDir: t.TempDir(), nc: operator.nc}
	e.w = e.startWorker(t) // the worker does all of its job with its own user
	if strings.Contains(e.w.log.String(), passwords["worker"]) {
		t.Error("the worker logged its NATS password")
	}

	adminTok := e.token(t, "a", admin)
	// Allowed: what each user is for.
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(true, "pk-1", "pk-2")))
	e.nc = service.nc
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", e.token(t, "u1"), `{"tokenId":"pk-1"}`))
	if r := e.request(t, "passkeys.list.u1", e.token(t, "u1"), nil); !strings.Contains(string(r.Data), "pk-2") {
		t.Fatalf("list as a service: %s", r.Data)
	}
	// The worker's own user reads the original of a duplicate (a Nats-Msg-Id
	// reused on another user's command) and replays stored commands.
	e.nc = operator.nc
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u2", adminTok, syncBody(true, "pk-1"), "Nats-Msg-Id", "perm-1"))
	testenv.WantError(t, e.request(t, "passkeys.sync.u3", adminTok, syncBody(true, "pk-1"), "Nats-Msg-Id", "perm-1"), 3, "REQUEST-MSGID-REUSED", "400")
	replayed := e.request(t, "passkeys.admin.replay", e.token(t, "root", "passkeys:system"), `{"fromSeq":1,"toSeq":100}`)
	if got, want := string(replayed.Data), `{"fromSeq":1,"toSeq":3,"read":3,"repeats":3,"applied":0,"refused":0,"failed":0}`; got != want {
		t.Fatalf("replay with the worker's user: %s, want %s", got, want)
	}
	js, err := jetstream.New(operator.nc)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg("passkeys.cmd.remove.u1")
	msg.Header.Set("Authorization", adminTok)
	msg.Data = []byte(`{"tokenId":"pk-2"}`)
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatalf("batch publish as an administrator: %v", err)
	}

	// Refused.
	service.denied(t, "a service writing a sync into the stream", "passkeys.cmd.sync.u1", func() error {
		return service.nc.Publish("passkeys.cmd.sync.u1", []byte(`{}`))
	})
	service.denied(t, "a service asking for a sync", "passkeys.sync.u1", func() error {
		_, err := service.nc.Request("passkeys.sync.u1", []byte(`{}`), 200*time.Millisecond)
		return err
	})
	service.denied(t, "a service reading the stream", "$JS.API.STREAM.INFO.PASSKEYS", func() error {
		_, err := service.nc.Request("$JS.API.STREAM.INFO.PASSKEYS", nil, 200*time.Millisecond)
		return err
	})
	service.denied(t, "a service making a consumer", "$JS.API.CONSUMER.CREATE.PASSKEYS.spy", func() error {
		_, err := service.nc.Request("$JS.API.CONSUMER.CREATE.PASSKEYS.spy", []byte(`{}`), 200*time.Millisecond)
		return err
	})
	service.denied(t, "a service listening to commands", "passkeys.cmd.>", func() error {
		_, err := service.nc.SubscribeSync("passkeys.cmd.>")
		return err
	})
	operator.denied(t, "an administrator purging the stream", "$JS.API.STREAM.PURGE.PASSKEYS", func() error {
		_, err := operator.nc.Request("$JS.API.STREAM.PURGE.PASSKEYS", nil, 200*time.Millisecond)
		return err
	})
	worker := connectAs(t, ns, "passkeys-worker", passwords["worker"])
	for _, subject := range []string{"$JS.API.STREAM.PURGE.PASSKEYS", "$JS.API.STREAM.DELETE.PASSKEYS", "$JS.API.CONSUMER.DELETE.PASSKEYS.passkeys-worker"} {
		worker.denied(t, "the worker's user", subject, func() error {
			return worker.nc.Publish(subject, nil)
		})
	}
}
