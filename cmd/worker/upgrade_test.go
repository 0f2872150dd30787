package main

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/storage"
)

// copyTree copies the directory src to dst, directories 0700, files 0600.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o700)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(to, raw, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The development deployment of the released version before partitions
// (commit f814a73: its bbolt file, its embedded server's stream and
// consumer, written by that version and kept in testdata), with commands
// stored after it stopped, upgrades in place: every user, sequence and
// outcome is kept, the commands it had not applied are applied once, and
// it goes on from there; a restart does not migrate again.
func TestUpgradeFromF814a73(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data")
	copyTree(t, "testdata/f814a73/data", dataDir)
	devKey, err := auth.LoadDevKey(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	token := func(sub string, scopes ...string) string {
		org := ""
		if len(scopes) > 0 {
			org = "org1"
		}
		tok, err := auth.Mint(devKey, auth.TokenRequest{Subject: sub, Org: org, Scopes: scopes, Issuer: auth.DevIssuer,
			Audience: auth.DevAudience, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return testenv.Bearer(tok)
	}
	admin := token("admin-1", "passkeys:admin")
	oldOutcomes := outcomeCount(t, filepath.Join(dataDir, "passkeys.db"))

	// Commands stored while the old worker was down, on the old subjects.
	ns := testenv.StartNATSAt(t, filepath.Join(dataDir, "jetstream"))
	nc := testenv.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ subject, msgID, body string }{
		{"passkeys.cmd.remove.u1", "tail-1", `{"tokenId":"pk-2"}`},
		{"passkeys.cmd.sync.carol", "tail-2", `{"resourceOwner":"org1","password":true,"passkeys":[{"id":"pk-c","state":"ready"}]}`},
	} {
		msg := nats.NewMsg(c.subject)
		msg.Header.Set("Authorization", admin)
		msg.Header.Set(nats.MsgIdHdr, c.msgID)
		msg.Data = []byte(c.body)
		if _, err := js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	nc.Close()
	ns.Shutdown()
	ns.WaitForShutdown()

	start := func() (*worker, *nats.Conn) {
		addr := testenv.FreeAddr(t)
		ctx, cancel := context.WithCancel(context.Background())
		w := &worker{cancel: cancel, done: make(chan struct{}), log: &testenv.SyncBuffer{}}
		go func() {
			defer close(w.done)
			w.err = run(ctx, []string{"--data-dir", dataDir, "--listen", addr, "--log-level", "debug"},
				func(string) string { return "" }, io.Discard, w.log)
		}()
		t.Cleanup(func() {
			cancel()
			<-w.done
			if t.Failed() {
				t.Logf("worker log:\n%s", w.log)
			}
		})
		var nc *nats.Conn
		waitFor(t, func() bool {
			var err error
			if nc == nil {
				nc, err = nats.Connect("nats://" + addr)
				if err != nil {
					return false
				}
				t.Cleanup(nc.Close)
			}
			_, err = nc.Request("$SRV.PING.passkeys", nil, 200*time.Millisecond)
			return err == nil
		})
		return w, nc
	}
	w, nc := start()
	if log := w.log.String(); !strings.Contains(log, `"tail_applied":2`) || !strings.Contains(log, "upgrade done") {
		t.Fatalf("no upgrade of the store, with the 2 commands it had not applied, in the log:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "passkeys.db.migrated")); err != nil {
		t.Errorf("the old store is not kept beside: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "passkeys.db")); err == nil {
		t.Error("the old store is still in place")
	}

	list := func(nc *nats.Conn, user string) string {
		msg := nats.NewMsg("passkeys.list." + user)
		msg.Header.Set("Authorization", admin)
		reply, err := nc.RequestMsg(msg, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			Details struct{ ProcessedSequence string }
			Result  []struct{ ID, State string }
		}
		if err := json.Unmarshal(reply.Data, &r); err != nil {
			t.Fatalf("list %s: %s", user, reply.Data)
		}
		out := r.Details.ProcessedSequence + ":"
		for _, pk := range r.Result {
			out += " " + pk.ID + "/" + strings.TrimPrefix(pk.State, "AUTH_FACTOR_STATE_")
		}
		return out
	}
	want := map[string]string{
		"u1":    "3:",                // pk-1 revoked before, pk-2 removed by the tail
		"u2":    "2: pk-2/READY",     // pk-1 revoked
		"u3":    "2:",                // removed its own pk-1
		"u4":    "1: pk-1/NOT_READY", // untouched
		"alice": "2: pk-b/READY",     // pk-a revoked
		"bob":   "1: pk-b/READY",     // refused: its last way to log in
		"carol": "1: pk-c/READY",     // synced by the tail
	}
	for user, w := range want {
		if got := list(nc, user); got != w {
			t.Errorf("list %s after the upgrade: %q, want %q", user, got, w)
		}
	}
	// It goes on: sequences continue, the rules hold.
	request := func(subject, body string) *nats.Msg {
		msg := nats.NewMsg(subject)
		msg.Header.Set("Authorization", admin)
		msg.Data = []byte(body)
		reply, err := nc.RequestMsg(msg, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return reply
	}
	if got := testenv.WantSuccess(t, request("passkeys.remove.alice", `{"tokenId":"pk-b"}`)); got.Details.Sequence != "3" {
		t.Errorf("alice's next sequence %s, want 3", got.Details.Sequence)
	}
	testenv.WantError(t, request("passkeys.remove.u2", `{"tokenId":"pk-2"}`), 9, "PASSKEY-LAST", "400")
	w.stop(t)
	var newOutcomes uint64
	for p := range 8 {
		newOutcomes += outcomeCount(t, filepath.Join(dataDir, "partitions", partition.Name(p)+".db"))
	}
	// Each outcome kept, and one more for each command applied since: the
	// two stored while the old worker was down, and the two above.
	if newOutcomes != oldOutcomes+4 {
		t.Errorf("outcome records: %d after the upgrade, %d before (+4 for the commands since)", newOutcomes, oldOutcomes)
	}

	// A restart finds the partitions, and migrates nothing again.
	w, nc = start()
	if strings.Contains(w.log.String(), "upgrad") {
		t.Errorf("the restart migrated again:\n%s", w.log)
	}
	if got := list(nc, "alice"); got != "3:" {
		t.Errorf("alice after the restart: %q", got)
	}
	w.stop(t)
}

func outcomeCount(t *testing.T, path string) uint64 {
	t.Helper()
	s, err := storage.Open(path, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n, err := s.OutcomeCount()
	if err != nil {
		t.Fatal(err)
	}
	return n
}
