package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The exit status tells a script what happened: 0 done, 1 the worker
// refused, 2 a usage or input mistake, 3 NATS unreachable or no reply.
// Flags go before or after the arguments, as the README writes them.
func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	stop, url, err := startEmbeddedWorker(context.Background(), benchConfig{dataDir: dir, maxBatch: 64}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	call := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), args, func(string) string { return "" }, nil, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	code, tok, _ := call("token", "--data-dir", dir, "--sub", "admin-1", "--org", "org1", "--admin")
	if code != exitOK {
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
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"Help", []string{"help"}, exitOK, "remove USER_ID TOKEN_ID"},
		{"Sync", []string{"sync", "--nats-url", url, "--token-file", tokFile, users}, exitOK, "1 synced"},
		// The README's own syntax: flags after the arguments.
		{"FlagsAfterArguments", []string{"remove", "u1", "pk-1", "--nats-url", url, "--token-file", tokFile}, exitOK, `"sequence":"2"`},
		{"Refused", []string{"remove", "--nats-url", url, "--token-file", tokFile, "u1", "pk-2"}, exitRejected, "PASSKEY-LAST"},
		{"ForceAfterArguments", []string{"remove", "--nats-url", url, "u1", "pk-2", "--force", "--token-file", tokFile}, exitOK, `"sequence":"3"`},
		{"DoubleDash", []string{"remove", "--nats-url", url, "--token-file", tokFile, "--", "u1", "--force"}, exitRejected, "PASSKEY-NOT-FOUND"},
		{"MissingArgument", []string{"remove", "u1"}, exitUsage, "want 2 argument(s), got 1"},
		{"ExtraArgument", []string{"remove", "u1", "pk-1", "pk-2"}, exitUsage, "want 2 argument(s), got 3"},
		{"UnknownFlag", []string{"remove", "u1", "pk-1", "--frobnicate"}, exitUsage, "flag provided but not defined"},
		{"Unreachable", []string{"remove", "--nats-url", "nats://127.0.0.1:1", "--token", "x", "u1", "pk-1"}, exitFailed, "connect to NATS"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := call(tt.args...)
			if code != tt.code || !strings.Contains(stdout+stderr, tt.want) {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q, want %q", code, tt.code, stdout, stderr, tt.want)
			}
		})
	}
}
