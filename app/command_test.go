package app

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/runner"
	"github.com/passkeys/worker/topology"
)

// A partition count or replica count of 0 on the command line is refused,
// not quietly replaced by the default; so is a mechanism --without does not
// know.
func TestMainRefusesZeroCounts(t *testing.T) {
	for _, c := range []struct{ flag, value, want string }{
		{"--partitions", "0", "--partitions must be between 1 and 256, not 0"},
		{"--replicas", "0", "--replicas must be between 1 and 5, not 0"},
		{"--without", "early-answers,leases", `"leases" is none of early-answers`},
	} {
		err := Main(context.Background(), []string{"--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", c.flag, c.value},
			func(string) string { return "" }, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s 0: %v, want %q", c.flag, err, c.want)
		}
	}
}

// --store-nosync is refused while the newest key set's rules version is
// below 2 (a command could then carry Nats-TTL and leave the stream before
// its outcome); with --rules 2 the embedded default writes its own set
// under rules 2 and starts.
func TestStoreNoSyncNeedsRules2(t *testing.T) {
	err := Main(context.Background(), []string{"--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--store-nosync"},
		func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--store-nosync needs rules version 2") {
		t.Fatalf("--store-nosync under rules 1: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan string, 1)
	done := make(chan error, 1)
	cfg := Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), CreateStream: true, OutcomeWait: time.Second, Rules: 2,
		Settings: topology.Settings{Retention: command.DefaultRetention, DuplicateWindow: 2 * time.Minute},
		Options:  runner.Options{StoreNoSync: true, MaxBatch: 64}, Started: func(url string) { started <- url }}
	go func() { done <- Run(ctx, cfg, zerolog.Nop()) }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("--store-nosync --rules 2 did not start: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("not started in 60 s")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
