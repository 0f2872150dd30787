package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/topology"
)

// The example handles each event once across a SIGKILL and a restart of
// its process: every id is remembered exactly once, and the consumer ends
// with nothing pending.
func TestNotifyHandlesEachEventOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a process")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "notify")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ns := testenv.StartNATS(t)
	nc := testenv.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, topology.Settings{EventsRetention: time.Hour, EventsDuplicates: time.Hour, Replicas: 1}.EventsStreamConfig()); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	for k := range n {
		id := "u" + strconv.Itoa(k) + ":1"
		msg := nats.NewMsg("passkeys.events.u" + strconv.Itoa(k))
		msg.Header.Set(nats.MsgIdHdr, id)
		msg.Data = []byte(`{"id":"` + id + `","type":"user.human.passwordless.token.removed","subject":"u` + strconv.Itoa(k) + `","data":{"name":"key"}}`)
		if _, err := js.PublishMsgAsync(msg); err != nil {
			t.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()

	state := filepath.Join(dir, "notify.state")
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "--nats-url", ns.ClientURL(), "--state", state, "--ack-wait", "2s")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	lines := func() []string {
		raw, _ := os.ReadFile(state)
		return strings.Fields(string(raw))
	}
	wait := func(what string, cond func() bool) {
		for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not in 60s", what)
			}
		}
	}
	first := start()
	wait("a part handled", func() bool { return len(lines()) >= n/4 })
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	killedAt := len(lines())
	start()
	cons, err := js.Consumer(ctx, "PASSKEYS_EVENTS", "notify")
	if err != nil {
		t.Fatal(err)
	}
	wait("all handled and acknowledged", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && len(lines()) >= n
	})
	seen := map[string]int{}
	for _, id := range lines() {
		seen[id]++
	}
	for k := range n {
		if id := "u" + strconv.Itoa(k) + ":1"; seen[id] != 1 {
			t.Fatalf("event %s handled %d times", id, seen[id])
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct ids handled, want %d", len(seen), n)
	}
	t.Logf("killed after %d of %d events; the restarted process handled the rest, none twice", killedAt, n)
}
