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

	"github.com/passkeys/worker/app"
	"github.com/passkeys/worker/client"
	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/testenv"
)

// The example removes a passkey from a running worker, and run again for
// the same report prints the same answer: the removal happened once.
func TestRevokeExample(t *testing.T) {
	ns := testenv.StartNATS(t)
	keys := testenv.NewKeys(t)
	log, err := app.NewLogger(io.Discard, app.LogJSON, "warn", "passkeys-worker")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started, stopped := make(chan string, 1), make(chan struct{})
	go func() {
		defer close(stopped)
		err := app.Run(ctx, app.Config{NATSURL: ns.ClientURL(), JWKS: keys.JWKSPath, Issuer: testenv.Issuer, Audience: testenv.Audience,
			DataDir: t.TempDir(), Retention: command.DefaultRetention, DuplicateWindow: 2 * time.Minute, MaxBatch: 64,
			CreateStream: true, OutcomeWait: 10 * time.Second, Partitions: 1, Started: func(string) { started <- "" }}, log)
		if err != nil {
			t.Error(err)
		}
	}()
	t.Cleanup(func() { cancel(); <-stopped })
	select {
	case <-started:
	case <-stopped:
		t.Fatal("the worker stopped")
	}
	admin := keys.Mint(t, testenv.Token{Subject: "sec", Org: "org1", Scopes: []string{"passkeys:admin"}})
	nc := testenv.Connect(t, ns.ClientURL())
	if _, err := client.New(nc, client.WithToken(admin)).Sync(context.Background(), client.User{ID: "u1", ResourceOwner: "org1",
		Passkeys: []client.Passkey{{ID: "pk-1", Name: "stolen", State: client.StateReady}}}); err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(t.TempDir(), "admin.tok")
	if err := os.WriteFile(tokFile, []byte(admin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var outs []string
	for range 2 {
		var out bytes.Buffer
		if err := run(context.Background(), []string{"--nats-url", ns.ClientURL(), "--token-file", tokFile, "--report", "42", "u1", "pk-1"}, &out); err != nil {
			t.Fatal(err)
		}
		outs = append(outs, out.String())
	}
	if !strings.HasPrefix(outs[0], "u1: passkey pk-1 removed (user sequence 2,") || outs[1] != outs[0] {
		t.Fatalf("outputs %q", outs)
	}
}
