package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/trust"
)

// One worker per data directory, and one process per worker id: a second
// process on the same data directory is refused at once, naming the first;
// a second process with a copy of the data directory (the same worker-id)
// is refused while the first is alive, and the first goes on serving.
func TestOneProcessPerWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	args := func(dataDir string) []string {
		return []string{"--nats-url", e.url, "--jwks", e.keys.JWKSPath, "--issuer", testenv.Issuer, "--audience", testenv.Audience,
			"--data-dir", dataDir}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, args(e.dataDir), func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "is in use by another worker process (pid "+itoa(os.Getpid())+")") {
		t.Fatalf("a second worker on the same data directory: %v", err)
	}
	copied := t.TempDir()
	raw, err := os.ReadFile(filepath.Join(e.dataDir, "worker-id"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(copied, "worker-id"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = run(ctx, args(copied), func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "another worker process runs with this worker id") {
		t.Fatalf("a second process with a copied worker-id: %v", err)
	}
	t.Logf("the copy was refused after %s", time.Since(start).Round(time.Millisecond))
	adminTok := e.token(t, "a", admin)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", adminTok, syncBody(true, "pk-1")))
}

// Two workers started together with different --jwks files on a stream
// with no key set, where their NATS user may write one: one's set becomes
// every partition's first control entry, and both judge by it; the other
// says its file differs.
func TestDifferentFilesOnAStreamWithNoKeySet(t *testing.T) {
	t.Parallel()
	ns := testenv.StartNATS(t)
	first := &env{url: ns.ClientURL(), keys: testenv.NewKeys(t), dataDir: t.TempDir()}
	second := &env{url: ns.ClientURL(), keys: testenv.NewKeys(t), dataDir: t.TempDir()}
	first.nc, second.nc = testenv.Connect(t, ns.ClientURL()), testenv.Connect(t, ns.ClientURL())
	var wg sync.WaitGroup
	for _, e := range []*env{first, second} {
		wg.Go(func() { e.w = e.startWorker(t) })
	}
	wg.Wait()
	js, err := jetstream.New(first.nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), "PASSKEYS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(partition.ControlSubjects))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.State.Subjects) != partition.DefaultCount {
		t.Fatalf("the partitions' control entries: %v, want one in each of %d", info.State.Subjects, partition.DefaultCount)
	}
	var body []byte
	for p := range partition.DefaultCount {
		entry, err := st.GetLastMsgForSubject(context.Background(), partition.ControlSubject(p))
		if err != nil || info.State.Subjects[partition.ControlSubject(p)] != 1 || (body != nil && !bytes.Equal(entry.Data, body)) {
			t.Fatalf("partition %d's control entries: %d, %v; the same as partition 0's: %v", p, info.State.Subjects[partition.ControlSubject(p)], err, entry != nil && bytes.Equal(entry.Data, body))
		}
		body = entry.Data
	}
	var set trust.Entry
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatal(err)
	}
	winner, loser := first, second
	if !sameJSON(set.Keys, first.keys.PublicSet("RS256", "PS256", "ES256", "EdDSA")) {
		winner, loser = second, first
	}
	if !sameJSON(set.Keys, winner.keys.PublicSet("RS256", "PS256", "ES256", "EdDSA")) {
		t.Fatal("the history's set is neither worker's file")
	}
	// Either worker may answer either request: both judge by the winner's keys.
	for range 4 {
		testenv.WantError(t, winner.request(t, "passkeys.list.u1", winner.token(t, "u1"), nil), 7, "PERMISSION-USER", "403")
		testenv.WantError(t, winner.request(t, "passkeys.list.u1", loser.token(t, "u1"), nil), 16, "AUTH-SIGNATURE", "401")
	}
	if !strings.Contains(loser.w.log.String(), `"differs":true`) || strings.Contains(winner.w.log.String(), `"differs":true`) {
		t.Errorf("the worker whose file lost does not say it differs, or the other does")
	}
}

func sameJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

func itoa(n int) string {
	raw, _ := json.Marshal(n)
	return string(raw)
}
