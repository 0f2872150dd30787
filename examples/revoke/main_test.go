package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/passkeys/worker/client"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/internal/testenv/testworker"
)

// The example removes a passkey from a running worker, and run again for
// the same report prints the same answer: the removal happened once.
func TestRevokeExample(t *testing.T) {
	ns := testenv.StartNATS(t)
	keys := testenv.NewKeys(t)
	testworker.Start(t, testworker.Config(ns.ClientURL(), keys, t.TempDir()))
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
