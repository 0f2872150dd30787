package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/passkeys/worker/app"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/publisher"
)

// A user NATS refuses a subject to is told so at once, not after its timeout.
func TestRefusedByNATSFailsFast(t *testing.T) {
	ns := testenv.StartNATSWithUsers(t, "../../nats.conf")
	password := testenv.Passwords["passkeys-service"]
	url := strings.Replace(ns.ClientURL(), "nats://", "nats://passkeys-service:"+password+"@", 1)
	users := filepath.Join(t.TempDir(), "users.jsonl")
	if err := os.WriteFile(users, []byte(`{"userId":"u1","resourceOwner":"o","password":true}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"sync", "--nats-url", url, "--token", "t", "--timeout", "30s", users}, `Permissions Violation for Publish to "passkeys.cmd.sync.u1"`},
		{[]string{"replay", "--nats-url", url, "--token", "t", "--timeout", "30s", "--from-seq", "1"}, `Permissions Violation for Publish to "passkeys.admin.replay"`},
		// A service may remove; with no worker running, nobody answers: the
		// client asks again (a worker may be restarting) until --timeout,
		// and then says so.
		{[]string{"remove", "--nats-url", url, "--token", "t", "--timeout", "2s", "u1", "pk-1"}, "no worker listening"},
	} {
		var stdout, stderr bytes.Buffer
		start := time.Now()
		code := run(context.Background(), tt.args, func(string) string { return "" }, nil, &stdout, &stderr)
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("%s: took %s, waited for its timeout", tt.args[0], took)
		}
		if code != publisher.ExitFailed || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%s as a service: exit %d, stderr %s; want %q", tt.args[0], code, stderr.String(), tt.want)
		}
		if strings.Contains(stderr.String(), password) {
			t.Errorf("%s: the password is in the output: %s", tt.args[0], stderr.String())
		}
	}
}

// Against nats.conf's users, each user's replies come to its own inbox
// prefix, which the publisher takes from the URL's user: a service removes
// and lists through request-reply, an administrator syncs and revokes in
// bulk (stream publishes with Reply-To), and both are answered. With the
// shared _INBOX (an --inbox-prefix that is not the user's) NATS refuses it.
func TestPublisherInboxPrefixPerUser(t *testing.T) {
	ns := testenv.StartNATSWithUsers(t, "../../nats.conf")
	keys := testenv.NewKeys(t)
	urlOf := func(user string) string { return testenv.UserURL(ns.ClientURL(), user) }
	var provisioned bytes.Buffer
	if err := app.Main(context.Background(), []string{"provision", "--nats-url", urlOf("passkeys-provisioner"),
		"--jwks", keys.JWKSPath, "--issuer", testenv.Issuer, "--audience", testenv.Audience},
		func(string) string { return "" }, &provisioned, io.Discard); err != nil {
		t.Fatalf("worker provision: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var workerLog testenv.SyncBuffer
	go func() {
		done <- app.Main(ctx, []string{"--nats-url", urlOf("passkeys-worker"), "--jwks", keys.JWKSPath,
			"--issuer", testenv.Issuer, "--audience", testenv.Audience, "--data-dir", t.TempDir(), "--create-stream=false"},
			func(string) string { return "" }, io.Discard, &workerLog)
	}()
	t.Cleanup(func() { cancel(); <-done })
	admin := testenv.Connect(t, urlOf("passkeys-admin"), nats.CustomInboxPrefix("_INBOX_passkeys-admin"))
	for {
		if _, err := admin.Request("$SRV.PING.passkeys", nil, 200*time.Millisecond); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("worker stopped: %v\n%s", err, workerLog.String())
		default:
		}
	}

	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	adminTok := write("admin.tok", keys.Mint(t, testenv.Token{Subject: "a", Org: "org1", Scopes: []string{"passkeys:admin"}}))
	userTok := write("u1.tok", keys.Mint(t, testenv.Token{Subject: "u1"}))
	users := write("users.jsonl", `{"userId":"u1","resourceOwner":"org1","password":true,"passkeys":[{"id":"pk-1","state":"ready"},{"id":"pk-2","state":"ready"}]}`+"\n")
	incident := write("incident.csv", "userId,tokenId\nu1,pk-2\n")
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"sync", "--nats-url", urlOf("passkeys-admin"), "--token-file", adminTok, users}, publisher.ExitOK, "1 synced"},
		{[]string{"remove", "--nats-url", urlOf("passkeys-service"), "--token-file", userTok, "u1", "pk-1"}, publisher.ExitOK, `"sequence":"2"`},
		{[]string{"revoke", "--nats-url", urlOf("passkeys-admin"), "--token-file", adminTok, incident}, publisher.ExitOK, "1 removed"},
		{[]string{"list", "--nats-url", urlOf("passkeys-service"), "--token-file", userTok, "u1"}, publisher.ExitOK, `"totalResult":"0"`},
		{[]string{"list", "--nats-url", urlOf("passkeys-service"), "--inbox-prefix", "_INBOX", "--timeout", "2s", "--token-file", userTok, "u1"}, publisher.ExitFailed, ""},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tt.args, func(string) string { return "" }, nil, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stdout.String(), tt.want) {
			t.Errorf("publisher %s: exit %d, stdout %q, stderr %q; want exit %d and %q", strings.Join(tt.args[:1], " "), code, stdout.String(), stderr.String(), tt.code, tt.want)
		}
	}
}
