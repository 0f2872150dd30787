package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
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
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(user, password), nats.CustomInboxPrefix("_INBOX_"+user),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case p.errs <- err:
			default:
			}
		}))
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
	t.Parallel()
	ns := testenv.StartNATSWithUsers(t, "../../nats.conf")
	passwords := map[string]string{"worker": testenv.Passwords["passkeys-worker"],
		"service": testenv.Passwords["passkeys-service"], "admin": testenv.Passwords["passkeys-admin"]}

	if _, err := nats.Connect(ns.ClientURL()); err == nil {
		t.Fatal("connected without a user")
	}
	operator := connectAs(t, ns, "passkeys-admin", passwords["admin"])
	service := connectAs(t, ns, "passkeys-service", passwords["service"])
	workerURL := testenv.UserURL(ns.ClientURL(), "passkeys-worker")
	e := &env{url: workerURL, keys: testenv.NewKeys(t), dataDir: t.TempDir(), nc: operator.nc}
	provision(t, ns.ClientURL(), e.keys.JWKSPath)
	e.w = e.startWorker(t, "--create-stream=false") // the worker does all of its job with its own user
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
	if got, want := string(replayed.Data), `{"fromSeq":1,"toSeq":11,"read":3,"repeats":3,"applied":0,"refused":0,"failed":0,"partitions":[0,1,2,3,4,5,6,7]}`; got != want {
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
	operator.denied(t, "an administrator writing a key set", "passkeys.part.0.control", func() error {
		return operator.nc.Publish("passkeys.part.0.control", []byte(`{}`))
	})
	worker := connectAs(t, ns, "passkeys-worker", passwords["worker"])
	for _, subject := range []string{"$JS.API.STREAM.PURGE.PASSKEYS", "$JS.API.STREAM.DELETE.PASSKEYS", "$JS.API.CONSUMER.DELETE.PASSKEYS.passkeys-worker",
		"$JS.API.STREAM.UPDATE.PASSKEYS", "$JS.API.STREAM.CREATE.PASSKEYS", "$JS.API.STREAM.UPDATE.PASSKEYS_DLQ",
		// No consumer of PASSKEYS may be made, changed or deleted with the
		// workers' password: not a partition's durable moved to another
		// partition's commands, not a push consumer delivering every token
		// elsewhere, in none of the API's forms.
		"$JS.API.CONSUMER.CREATE.PASSKEYS.passkeys-worker-p003.passkeys.part.4.>", "$JS.API.CONSUMER.CREATE.PASSKEYS.passkeys-worker-p003",
		"$JS.API.CONSUMER.CREATE.PASSKEYS.spy", "$JS.API.CONSUMER.CREATE.PASSKEYS", "$JS.API.CONSUMER.DURABLE.CREATE.PASSKEYS.spy",
		"$JS.API.CONSUMER.DELETE.PASSKEYS.passkeys-worker-p003",
		// Nor the trusted keys written: only the provisioner sets them.
		"passkeys.part.0.control", "passkeys.part.7.control"} {
		worker.denied(t, "the worker's user", subject, func() error {
			return worker.nc.Publish(subject, nil)
		})
	}
}

// Each NATS user of nats.conf receives only its own traffic. A spy for each
// user subscribes to everything the server lets it (the whole subject space,
// every inbox prefix, the stream's subjects, the JetStream API), while the
// worker serves a service's removals and lists and an administrator's sync,
// batch publish and replay. No spy sees a message on another user's inbox or
// any bearer token but its own user's; every user's plain request-reply with
// its own inbox prefix works, and with the shared _INBOX it is refused.
func TestInboxesAreConfined(t *testing.T) {
	t.Parallel()
	ns := testenv.StartNATSWithUsers(t, "../../nats.conf")
	users := []string{"passkeys-worker", "passkeys-service", "passkeys-admin", "passkeys-provisioner"}
	type spy struct {
		user string
		nc   *nats.Conn
		mu   sync.Mutex
		seen []*nats.Msg
	}
	var spies []*spy
	for _, user := range users {
		sp := &spy{user: user}
		sp.nc = connectAs(t, ns, user, testenv.Passwords[user]).nc
		for _, subject := range []string{">", "_INBOX.>", "_INBOX_passkeys-worker.>", "_INBOX_passkeys-service.>",
			"_INBOX_passkeys-admin.>", "_INBOX_passkeys-provisioner.>", "_INBOX_*.>", "passkeys.>", "$JS.>", "$SRV.>", "*.>"} {
			_, _ = sp.nc.Subscribe(subject, func(m *nats.Msg) { sp.mu.Lock(); sp.seen = append(sp.seen, m); sp.mu.Unlock() })
		}
		spies = append(spies, sp)
	}

	operator := connectAs(t, ns, "passkeys-admin", testenv.Passwords["passkeys-admin"])
	service := connectAs(t, ns, "passkeys-service", testenv.Passwords["passkeys-service"])
	e := &env{url: testenv.UserURL(ns.ClientURL(), "passkeys-worker"), keys: testenv.NewKeys(t), dataDir: t.TempDir(), nc: operator.nc}
	provision(t, ns.ClientURL(), e.keys.JWKSPath)
	e.w = e.startWorker(t, "--create-stream=false")

	adminTok := e.token(t, "a", admin)
	userTok := e.token(t, "u1")
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(true, "pk-1", "pk-2", "pk-3")))
	// A batch publisher's command straight into the stream, its reply to
	// the administrator's inbox.
	testenv.WantSuccess(t, streamRequest(t, operator.nc, "passkeys.cmd.remove.u1", adminTok, "", `{"tokenId":"pk-3"}`))
	js, err := jetstream.New(operator.nc)
	if err != nil {
		t.Fatal(err)
	}
	// An administrator's $SRV request whose reply subject is the JetStream
	// API: the worker may not publish there.
	ping := nats.NewMsg("$SRV.PING.passkeys")
	ping.Reply = "$JS.API.STREAM.PURGE.PASSKEYS"
	if err := operator.nc.PublishMsg(ping); err != nil {
		t.Fatal(err)
	}
	if _, err := operator.nc.Request("$SRV.PING.passkeys", nil, 5*time.Second); err != nil {
		t.Fatalf("$SRV.PING as an administrator: %v", err)
	}
	e.nc = service.nc
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", userTok, `{"tokenId":"pk-1"}`))
	if r := e.request(t, "passkeys.list.u1", userTok, nil); !strings.Contains(string(r.Data), "pk-2") {
		t.Fatalf("list as a service: %s", r.Data)
	}
	if n := streamMsgs(t, js); n != 3 {
		t.Fatalf("stream PASSKEYS holds %d commands, want 3 (was it purged?)", n)
	}

	// The shared _INBOX is refused to every caller.
	for _, user := range []string{"passkeys-service", "passkeys-admin"} {
		nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(user, testenv.Passwords[user]))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := nc.Request("passkeys.list.u1", nil, 2*time.Second); err == nil {
			t.Errorf("%s got a reply on the shared _INBOX", user)
		}
		nc.Close()
	}

	tokens := map[string]string{"passkeys-admin": adminTok, "passkeys-service": userTok}
	for _, sp := range spies {
		if err := sp.nc.Flush(); err != nil { // every message routed before now has reached the spy
			t.Fatal(err)
		}
		sp.mu.Lock()
		if len(sp.seen) == 0 {
			t.Errorf("%s's spy saw nothing, not even its own user's replies: it cannot have been listening", sp.user)
		}
		for _, m := range sp.seen {
			// The worker's own user receives every command, token included,
			// on its inbox: that is its job. Everyone else only their own.
			if m.Sub.Subject != "_INBOX_"+sp.user+".>" && !(sp.user == "passkeys-worker" && m.Sub.Subject == "$SRV.>") {
				t.Errorf("%s's spy received %s (subscribed to %s)", sp.user, m.Subject, m.Sub.Subject)
			}
			for owner, tok := range tokens {
				raw := strings.TrimPrefix(tok, "Bearer ")
				if owner != sp.user && sp.user != "passkeys-worker" && (strings.Contains(string(m.Data), raw) || strings.Contains(fmt.Sprint(m.Header), raw)) {
					t.Errorf("%s's spy read %s's token on %s", sp.user, owner, m.Subject)
				}
			}
		}
		sp.mu.Unlock()
	}
}

// provision runs `worker provision --jwks` as nats.conf's provisioner
// user, as the production recipe does before the workers start with
// --create-stream=false.
func provision(tb testing.TB, url, jwks string, extra ...string) {
	tb.Helper()
	var out, errs bytes.Buffer
	err := run(context.Background(), append([]string{"provision", "--nats-url", testenv.UserURL(url, "passkeys-provisioner"),
		"--jwks", jwks, "--issuer", testenv.Issuer, "--audience", testenv.Audience, "--lease-ttl", testLeaseTTL, "--ack-wait", testAckWait}, extra...),
		func(string) string { return "" }, &out, &errs)
	if err != nil || !strings.Contains(out.String(), "provisioned") {
		tb.Fatalf("worker provision: %v\n%s%s", err, out.String(), errs.String())
	}
}
