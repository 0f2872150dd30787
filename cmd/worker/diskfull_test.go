package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
)

// mountSmallFS mounts a tmpfs of the given size for the test, or skips the
// test where this machine does not let it (not root, no mount).
func mountSmallFS(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s)", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fill writes into dir until the file system is full, and returns the file.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	for _, size := range []int{4096, 512, 1} { // the last crumbs too
		for {
			if _, err := f.Write(chunk[:size]); err != nil {
				break
			}
		}
	}
	return path
}

// A full disk during commits: the partitions wait; the commands are not
// applied, nobody gets a reply for them, nothing is nacked past or
// dead-lettered, and once there is room each is applied once and answered.
func TestDiskFull(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("mounts a file system")
	}
	const users = 400
	small := mountSmallFS(t, "8m")
	ns := testenv.StartNATS(t)
	e := &env{url: ns.ClientURL(), keys: testenv.NewKeys(t), dataDir: filepath.Join(small, "data")}
	e.nc = testenv.Connect(t, e.url)
	httpAddr := testenv.FreeAddr(t)
	e.w = e.startWorker(t, "--http-listen", httpAddr)
	admin := e.token(t, "a", admin)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	synced := &replies{got: map[int][][]byte{}}
	inbox := collect(t, e.nc, synced)

	filler := fill(t, small)
	// New users need new pages, and there is no room for them.
	for u := range users {
		publish(t, js, "passkeys.cmd.sync.v"+strconv.Itoa(u), admin, inbox+"."+strconv.Itoa(u), "full-"+strconv.Itoa(u),
			syncBody(true, "pk-1", "pk-2", "pk-3", strings.Repeat("x", 150)))
	}
	// The worker says so: in its log, and /readyz is not ready.
	waitFor(t, func() bool { return strings.Contains(e.w.log.String(), "the partition waits and tries again") })
	waitFor(t, func() bool {
		code, body := httpGet(t, httpAddr, "/readyz")
		return code == 503 && strings.Contains(body, "store")
	})
	whileFull := synced.count()
	if whileFull == users {
		t.Fatal("every command was answered: the file system never filled")
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitCount(t, synced, users, 60*time.Second)
	waitFor(t, func() bool { code, _ := httpGet(t, httpAddr, "/readyz"); return code == 200 })
	t.Logf("%d of %d commands answered while the disk was full, the rest once there was room", whileFull, users)
	// Nothing is dead-lettered: the stream of the version before is no
	// longer even made.
	if _, err := js.Stream(context.Background(), "PASSKEYS_DLQ"); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("stream PASSKEYS_DLQ: %v; want none", err)
	}
	synced.mu.Lock()
	defer synced.mu.Unlock()
	for u := range users {
		got := synced.got[u]
		for _, again := range got[1:] {
			if string(again) != string(got[0]) {
				t.Fatalf("user %d: different replies", u)
			}
		}
		var r struct{ Details struct{ Sequence string } }
		if err := json.Unmarshal(got[0], &r); err != nil || r.Details.Sequence != "1" {
			t.Fatalf("user %d: %s", u, got[0])
		}
	}
}
