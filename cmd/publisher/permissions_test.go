package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/passkeys/worker/internal/testenv"
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
		// A service may remove; with no worker running, nobody answers, and it says so.
		{[]string{"remove", "--nats-url", url, "--token", "t", "--timeout", "30s", "u1", "pk-1"}, "no worker answers"},
	} {
		var stdout, stderr bytes.Buffer
		start := time.Now()
		code := run(context.Background(), tt.args, func(string) string { return "" }, nil, &stdout, &stderr)
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("%s: took %s, waited for its timeout", tt.args[0], took)
		}
		if code != exitFailed || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%s as a service: exit %d, stderr %s; want %q", tt.args[0], code, stderr.String(), tt.want)
		}
		if strings.Contains(stderr.String(), password) {
			t.Errorf("%s: the password is in the output: %s", tt.args[0], stderr.String())
		}
	}
}
