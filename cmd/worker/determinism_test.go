package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/storage"
)

// records reads every record (outbox aside) of each partition's store in
// dataDir, for comparing the states of two workers byte for byte.
func records(t *testing.T, dataDir string) []string {
	t.Helper()
	var out []string
	for p := range 8 {
		s, err := storage.Open(filepath.Join(dataDir, "partitions", partition.Name(p)+".db"), storage.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		err = s.Records(func(bucket string, k, v []byte) error {
			fmt.Fprintf(&b, "%s %q %x\n", bucket, k, v)
			return nil
		})
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b.String())
	}
	return out
}

// Applying is deterministic. Worker A applies commands, stops (its
// snapshots are written), the keys rotate (the key that signed the first
// commands is dropped), A applies more and is killed. B, on an empty data
// directory, takes over from the snapshots and the stream; C, on another
// empty one with the snapshots gone too, from the stream alone. All three
// stores are equal record for record (outboxes aside): the commands signed
// before the rotation are judged by the keys of their time, those after by
// the new ones. And repeats answered by C are A's replies, byte for byte.
func TestTakeoverIsDeterministic(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	const users = 40
	bin := buildWorker(t)
	ns := testenv.StartNATS(t)
	keys := testenv.NewKeys(t)
	a := &env{url: ns.ClientURL(), keys: keys, dataDir: t.TempDir()}
	a.nc = testenv.Connect(t, a.url)
	js, err := jetstream.New(a.nc)
	if err != nil {
		t.Fatal(err)
	}
	adminEd := testenv.Bearer(keys.Mint(t, testenv.Token{Kid: "EdDSA", Subject: "admin", Org: "org1", Scopes: []string{"passkeys:admin"}}))
	adminES := testenv.Bearer(keys.Mint(t, testenv.Token{Kid: "ES256", Subject: "admin", Org: "org1", Scopes: []string{"passkeys:admin"}}))
	got := &replies{got: map[int][][]byte{}}
	inbox := collect(t, a.nc, got)
	// Command k: its subject, body, Nats-Msg-Id and token, for a repeat.
	type cmd struct{ subject, body, msgID, auth string }
	var cmds []cmd
	send := func(c cmd) {
		cmds = append(cmds, c)
		k := len(cmds) - 1
		msg := nats.NewMsg(c.subject)
		msg.Header.Set("Authorization", c.auth)
		msg.Header.Set("Reply-To", inbox+"."+strconv.Itoa(k))
		msg.Header.Set(nats.MsgIdHdr, c.msgID)
		msg.Data = []byte(c.body)
		if _, err := js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}

	procA := a.startProcess(t, bin, "--snapshot-interval", "1h")
	waitReady(t, js)
	for u := range users {
		id := "user-" + strconv.Itoa(u)
		send(cmd{"passkeys.cmd.sync." + id, `{"resourceOwner":"org1","passkeys":[{"id":"pk-0","state":"ready"},{"id":"pk-1","state":"ready"},{"id":"pk-2","state":"ready"}]}`, "s-" + id, adminEd})
		send(cmd{"passkeys.cmd.remove." + id, `{"tokenId":"pk-0"}`, "r0-" + id, adminEd})
	}
	waitCount(t, got, len(cmds), 60*time.Second)
	procA.stop(t)

	// The rotation, as an operator does it: the key that signed the
	// commands so far is dropped.
	keys.WriteJWKS(t, "ES256")
	provision(t, a.url, keys.JWKSPath)
	procA = a.startProcess(t, bin, "--snapshot-interval", "1h")
	waitReady(t, js)
	waitFor(t, func() bool { // the new key set is in force
		return strings.Contains(string(a.request(t, "passkeys.list.user-0", adminEd, nil).Data), "AUTH-KEY-UNKNOWN")
	})
	first := len(cmds)
	for u := range users {
		id := "user-" + strconv.Itoa(u)
		send(cmd{"passkeys.cmd.remove." + id, `{"tokenId":"pk-1"}`, "r1-" + id, adminES})
	}
	send(cmd{"passkeys.cmd.remove.user-0", `{"tokenId":"pk-2"}`, "late-old-key", adminEd}) // signed by the dropped key
	waitCount(t, got, len(cmds), 60*time.Second)
	if late := string(got.got[len(cmds)-1][0]); !strings.Contains(late, `"code":16`) || !strings.Contains(late, "AUTH-KEY-UNKNOWN") {
		t.Fatalf("a command signed by the dropped key, stored after the rotation: %s", late)
	}
	if err := procA.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = procA.cmd.Wait()

	// B: an empty data directory, the snapshots (of the first half) and
	// the stream.
	b := &env{url: a.url, keys: keys, dataDir: t.TempDir()}
	addrB := testenv.FreeAddr(t)
	procB := b.startProcess(t, bin, "--snapshot-interval", "1h", "--log-level", "info", "--http-listen", addrB)
	waitWithin(t, 30*time.Second, func() bool { return allServed([]string{addrB}) }) // A's leases expire first
	procB.stop(t)
	logB := readFile(t, procB.log.Name())
	if !strings.Contains(logB, "partition state loaded from its snapshot") || caughtUp(logB) != users+1 {
		t.Fatalf("worker B did not take over from the snapshots and then %d commands of the stream (it applied %d)", users+1, caughtUp(logB))
	}

	// C: an empty data directory and no snapshots: the stream alone, the
	// first half judged by the key of its time.
	if err := js.DeleteObjectStore(context.Background(), "PASSKEYS_SNAPSHOTS"); err != nil {
		t.Fatal(err)
	}
	c := &env{url: a.url, keys: keys, dataDir: t.TempDir()}
	addrC := testenv.FreeAddr(t)
	procC := c.startProcess(t, bin, "--snapshot-interval", "1h", "--log-level", "info", "--http-listen", addrC)
	waitWithin(t, 30*time.Second, func() bool { return allServed([]string{addrC}) })
	procC.stop(t)
	if n := caughtUp(readFile(t, procC.log.Name())); n != len(cmds) {
		t.Fatalf("worker C applied %d commands from the stream, want all %d", n, len(cmds))
	}

	ra, rb, rc := records(t, a.dataDir), records(t, b.dataDir), records(t, c.dataDir)
	for p := range 8 {
		if ra[p] != rb[p] || ra[p] != rc[p] {
			t.Errorf("partition %d differs:\nA:\n%s\nB:\n%s\nC:\n%s", p, ra[p], rb[p], rc[p])
		}
	}

	// Repeats through the endpoint, answered by C from its own store: A's
	// first replies, byte for byte.
	procC = c.startProcess(t, bin, "--snapshot-interval", "1h", "--http-listen", addrC)
	waitWithin(t, 30*time.Second, func() bool {
		_, err := a.nc.Request("$SRV.PING.passkeys", nil, 200*time.Millisecond)
		return allServed([]string{addrC}) && err == nil
	})
	for k, cm := range cmds[:len(cmds)-1] {
		if k%7 != 0 && k < first {
			continue // a sample of the first half, all of the second
		}
		op, user, _ := strings.Cut(strings.TrimPrefix(cm.subject, "passkeys.cmd."), ".")
		msg := nats.NewMsg("passkeys." + op + "." + user)
		msg.Header.Set("Authorization", adminES) // the same principal, a token of today's key
		msg.Header.Set(nats.MsgIdHdr, cm.msgID)
		msg.Data = []byte(cm.body)
		reply, err := a.nc.RequestMsg(msg, 15*time.Second)
		if err != nil {
			t.Fatalf("repeat of command %d: %v", k, err)
		}
		if !bytes.Equal(reply.Data, got.got[k][0]) {
			t.Errorf("repeat of command %d (%s): %s, first reply %s", k, cm.msgID, reply.Data, got.got[k][0])
		}
	}
	procC.stop(t)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}
