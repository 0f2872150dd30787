package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/runner"
	"github.com/passkeys/worker/storage"
)

// Backup while the worker runs, more traffic, lose everything but the
// stream (data directory and snapshots), restore the backup, restart: each
// partition applies what its store missed before it takes new work, and
// the stores end as ones that never went back.
func TestBackupRestoreCatchUp(t *testing.T) {
	t.Parallel()
	addr := testenv.FreeAddr(t)
	e := newEnv(t, "--http-listen", addr)
	adminTok := e.token(t, "a", admin)
	users := func(from, to int, f func(id string)) {
		for u := from; u < to; u++ {
			f("user-" + strconv.Itoa(u))
		}
	}
	users(0, 50, func(id string) {
		testenv.WantSuccess(t, e.request(t, "passkeys.sync."+id, adminTok, syncBody(true, "pk-0", "pk-1", "pk-2")))
	})
	users(0, 25, func(id string) {
		testenv.WantSuccess(t, e.request(t, "passkeys.remove."+id, adminTok, `{"tokenId":"pk-0"}`))
	})

	backup := filepath.Join(t.TempDir(), "backup")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"backup", "--out", backup, "--from", addr}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatalf("backup from the running worker: %v", err)
	}
	if !strings.Contains(out.String(), "backup: 8 partitions, ") || !strings.Contains(out.String(), "bytes written to "+backup) {
		t.Fatalf("backup said %q", out.String())
	}
	// Without --from, the running worker's lock is in the way, and it says so.
	err := run(context.Background(), []string{"backup", "--out", backup + "2", "--data-dir", e.dataDir}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "use --from") {
		t.Fatalf("backup of a locked store: %v", err)
	}

	// More traffic after the backup.
	users(0, 50, func(id string) {
		testenv.WantSuccess(t, e.request(t, "passkeys.remove."+id, adminTok, `{"tokenId":"pk-1"}`))
	})
	users(25, 50, func(id string) {
		testenv.WantSuccess(t, e.request(t, "passkeys.remove."+id, adminTok, `{"tokenId":"pk-0"}`))
	})
	users(50, 60, func(id string) {
		testenv.WantSuccess(t, e.request(t, "passkeys.sync."+id, adminTok, syncBody(false, "pk-9")))
	})
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	events := eventsPublished(t, js, addr)
	e.w.stop(t)
	live := snapshotAll(t, e.dataDir, 60)

	// The data directory and the snapshots are lost; the stream is not.
	if err := os.RemoveAll(e.dataDir); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteObjectStore(context.Background(), "PASSKEYS_SNAPSHOTS"); err != nil {
		t.Fatal(err)
	}
	// Restore, restart, catch up.
	files, err := filepath.Glob(filepath.Join(backup, "p*.db"))
	if err != nil || len(files) != 8 {
		t.Fatalf("backup files %v (%v)", files, err)
	}
	if err := os.MkdirAll(filepath.Join(e.dataDir, "partitions"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(e.dataDir, "partitions", filepath.Base(f)), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.w = e.startWorker(t, "--http-listen", addr)
	waitFor(t, func() bool { return caughtUp(e.w.log.String()) == 85 })
	// The catch-up re-applied 85 commands and wrote their events again:
	// the same ids, so the stream dropped them.
	if got := eventsPublished(t, js, addr); got != events {
		t.Fatalf("PASSKEYS_EVENTS holds %d events after the restore, %d before: the catch-up published new ones", got, events)
	}
	e.w.stop(t)
	restored := snapshotAll(t, e.dataDir, 60)
	if !reflect.DeepEqual(restored, live) {
		t.Fatalf("the restored store differs from the one that never went back:\n%+v\n%+v", restored, live)
	}

	// And it takes new work where the old one left off.
	e.w = e.startWorker(t, "--http-listen", addr)
	got := testenv.WantSuccess(t, e.request(t, "passkeys.remove.user-7", adminTok, `{"tokenId":"pk-2"}`))
	// user-7: sync, pk-0 removed before the backup, pk-1 after it, now pk-2.
	if got.Details.Sequence != "4" {
		t.Fatalf("sequence after the restore %s, want 4", got.Details.Sequence)
	}
}

type storeSnapshot struct {
	AppliedSeq []uint64 // per partition
	Users      []*passkey.User
}

// snapshotAll reads the partition stores of a data directory: each one's
// applied sequence, and users user-0 to user-<users-1> from the
// partition each is in.
func snapshotAll(t *testing.T, dataDir string, users int) storeSnapshot {
	t.Helper()
	var snap storeSnapshot
	stores := make([]*storage.Store, 8)
	for p := range stores {
		s, err := storage.Open(filepath.Join(dataDir, "partitions", partition.Name(p)+".db"), storage.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		stores[p] = s
		err = s.View(func(tx *storage.Tx) error { snap.AppliedSeq = append(snap.AppliedSeq, tx.AppliedSeq()); return nil })
		if err != nil {
			t.Fatal(err)
		}
	}
	for u := range users {
		id := "user-" + strconv.Itoa(u)
		err := stores[partition.Of(id, 8)].View(func(tx *storage.Tx) error {
			got, err := tx.User(id)
			snap.Users = append(snap.Users, got)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return snap
}

// caughtUp sums the commands the partitions' catch-ups applied, from the
// worker's log.
func caughtUp(log string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `"message":"caught up with the stream"`) {
			continue
		}
		var ev struct{ Applied int }
		if json.Unmarshal([]byte(line), &ev) == nil {
			n += ev.Applied
		}
	}
	return n
}

// eventsPublished waits until the worker's outbox is empty (its metrics at
// addr) and returns how many events stream PASSKEYS_EVENTS holds.
func eventsPublished(tb testing.TB, js jetstream.JetStream, addr string) uint64 {
	tb.Helper()
	waitFor(tb, func() bool {
		_, body := httpGet(tb, addr, "/metrics")
		return strings.Contains(body, "\npasskeys_events_waiting 0\n")
	})
	return streamLen(tb, js, "PASSKEYS_EVENTS")
}

// A partition state built from another stream PASSKEYS (the stream was
// deleted and created again, here by the worker itself on its next start)
// is refused: its applied sequence is past every command of the new
// stream, which would all be taken for commands applied already. The
// partition is not served and says why; nothing is answered from the old
// state.
func TestStateOfAnotherStreamIsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "--partitions", "1")
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", e.token(t, "a", admin), syncBody(true, "pk-1", "pk-2")))
	testenv.WantSuccess(t, e.request(t, "passkeys.remove.u1", e.token(t, "u1"), map[string]string{"tokenId": "pk-1"}))
	e.w.stop(t)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(context.Background(), "PASSKEYS"); err != nil {
		t.Fatal(err)
	}
	w := e.startWorker(t, "--partitions", "1")
	waitFor(t, func() bool { return strings.Contains(w.log.String(), "PARTITION CANNOT BE REBUILT") })
	if !strings.Contains(w.log.String(), "built from another stream PASSKEYS") {
		t.Fatalf("the refusal does not say why:\n%s", w.log)
	}
	testenv.WantError(t, e.request(t, "passkeys.list.u1", e.token(t, "u1"), nil), 14, passkey.IDPartitionUnavailable, "503")
}

// A stream restored from an older backup keeps its creation time, so only
// its commands tell it apart: once it has grown past what a partition's
// state applied, the command under the state's last sequence is another
// one. Here u1's partition's state says it applied the stream's last
// command, but that is the sync of a user of another partition: u1's
// partition is refused (and stays refused at the next start) rather than
// taking the commands up to it for applied.
func TestStateOfARestoredStreamIsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	testenv.WantSuccess(t, e.request(t, "passkeys.sync.u1", e.token(t, "a", admin), syncBody(true, "pk-1", "pk-2")))
	e.w.stop(t)
	other := "u2"
	for i := 2; partition.Of(other, partition.DefaultCount) == partition.Of("u1", partition.DefaultCount); i++ {
		other = "u" + strconv.Itoa(i)
	}
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg("passkeys.cmd.sync." + other)
	msg.Header.Set("Authorization", e.token(t, "a", admin))
	msg.Header.Set(nats.MsgIdHdr, "sync-"+other)
	msg.Data = encode(t, syncBody(true, "pk-1"))
	ack, err := js.PublishMsg(context.Background(), msg)
	if err != nil {
		t.Fatalf("publish: %v, %+v", err, ack)
	}
	st, err := storage.Open(runner.StorePath(e.dataDir, partition.Of("u1", partition.DefaultCount)), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(func(tx *storage.Tx) error { return tx.NoteApplied(ack.Sequence, time.Unix(1, 0)) }); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 { // and again: the refusal stands
		w := e.startWorker(t)
		waitFor(t, func() bool { return strings.Contains(w.log.String(), "PARTITION CANNOT BE REBUILT") })
		if !strings.Contains(w.log.String(), "is not the one the partition's state applied under "+strconv.FormatUint(ack.Sequence, 10)) {
			t.Fatalf("the refusal does not say why:\n%s", w.log)
		}
		testenv.WantError(t, e.request(t, "passkeys.list.u1", e.token(t, "a", admin), nil), 14, passkey.IDPartitionUnavailable, "503")
		w.stop(t)
	}
}
