package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/passkeys/worker/app"
	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/testenv/testworker"
	"github.com/passkeys/worker/publisher"
	"github.com/passkeys/worker/runner"
	"github.com/passkeys/worker/topology"
)

// The exit status tells a script what happened: 0 done, 1 the worker
// refused, 2 a usage or input mistake, 3 NATS unreachable or no reply.
// Flags go before or after the arguments, as the README writes them.
func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	url := startEmbeddedWorker(t, dir)
	call := func(env map[string]string, args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), args, func(k string) string { return env[k] }, nil, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	code, tok, _ := call(nil, "token", "--data-dir", dir, "--sub", "admin-1", "--org", "org1", "--admin")
	if code != publisher.ExitOK {
		t.Fatalf("token: exit %d", code)
	}
	tokFile := filepath.Join(dir, "admin.tok")
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(dir, "users.jsonl")
	if err := os.WriteFile(users, []byte(`{"userId":"u1","resourceOwner":"org1","passkeys":[{"id":"pk-1","state":"ready"},{"id":"pk-2","state":"ready"}]}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The environment gives where and as whom, never what a command does.
	fromEnv := map[string]string{"PASSKEYS_NATS_URL": url, "PASSKEYS_TOKEN_FILE": tokFile, "PASSKEYS_FORCE": "true"}
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"Help", nil, []string{"help"}, publisher.ExitOK, "remove USER_ID TOKEN_ID"},
		{"Sync", nil, []string{"sync", "--nats-url", url, "--token-file", tokFile, users}, publisher.ExitOK, "1 synced"},
		// The README's own syntax: flags after the arguments.
		{"FlagsAfterArguments", nil, []string{"remove", "u1", "pk-1", "--nats-url", url, "--token-file", tokFile}, publisher.ExitOK, `"sequence":"2"`},
		{"Refused", nil, []string{"remove", "--nats-url", url, "--token-file", tokFile, "u1", "pk-2"}, publisher.ExitRejected, "PASSKEY-LAST"},
		{"FromEnvironment", fromEnv, []string{"remove", "u1", "pk-2"}, publisher.ExitRejected, "PASSKEY-LAST"}, // PASSKEYS_FORCE does not force
		{"ForceAfterArguments", nil, []string{"remove", "--nats-url", url, "u1", "pk-2", "--force", "--token-file", tokFile}, publisher.ExitOK, `"sequence":"3"`},
		{"DoubleDash", nil, []string{"remove", "--nats-url", url, "--token-file", tokFile, "--", "u1", "--force"}, publisher.ExitRejected, "PASSKEY-NOT-FOUND"},
		{"MissingArgument", nil, []string{"remove", "u1"}, publisher.ExitUsage, "want 2 argument(s), got 1"},
		{"ExtraArgument", nil, []string{"remove", "u1", "pk-1", "pk-2"}, publisher.ExitUsage, "want 2 argument(s), got 3"},
		{"UnknownFlag", nil, []string{"remove", "u1", "pk-1", "--frobnicate"}, publisher.ExitUsage, "flag provided but not defined"},
		{"Unreachable", nil, []string{"remove", "--nats-url", "nats://127.0.0.1:1", "--token", "x", "u1", "pk-1"}, publisher.ExitFailed, "connect to NATS"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := call(tt.env, tt.args...)
			if code != tt.code || !strings.Contains(stdout+stderr, tt.want) {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q, want %q", code, tt.code, stdout, stderr, tt.want)
			}
		})
	}
}

// startEmbeddedWorker runs the development default (embedded NATS, the
// development key in dir) in this process until the test ends, and returns
// its NATS URL.
func startEmbeddedWorker(tb testing.TB, dir string) string {
	tb.Helper()
	url, _ := testworker.Start(tb, app.Config{Listen: "127.0.0.1:0", DataDir: dir,
		Settings: topology.Settings{Retention: command.DefaultRetention, DuplicateWindow: 2 * time.Minute},
		Options:  runner.Options{MaxBatch: 64}, CreateStream: true, OutcomeWait: 10 * time.Second})
	return url
}
