package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/partition"
)

// A confirmed revocation is never undone: the tests of the ways a hostile
// review found to undo one with several workers, each against real worker
// processes.

// writeKeySet writes a JWKS file of the named keys and returns its path.
func writeKeySet(t *testing.T, keys *testenv.Keys, kids ...string) string {
	t.Helper()
	raw, err := json.Marshal(keys.PublicSet(kids...))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), strings.Join(kids, "+")+".json")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ask sends a request as a client does: on a timeout it asks again with
// the same Nats-Msg-Id (a request that reached a frozen worker is lost),
// for up to limit.
func ask(t *testing.T, nc *nats.Conn, subject, auth, msgID string, body any, limit time.Duration) *nats.Msg {
	t.Helper()
	msg := nats.NewMsg(subject)
	msg.Header.Set("Authorization", auth)
	if msgID != "" {
		msg.Header.Set(nats.MsgIdHdr, msgID)
	}
	msg.Data = encode(t, body)
	deadline := time.Now().Add(limit)
	for {
		reply, err := nc.RequestMsg(msg, 2*time.Second)
		if err == nil {
			return reply
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no answer in %s: %v", subject, limit, err)
		}
	}
}

// tryGet is a worker's answer to GET path; "" when it does not answer.
func tryGet(addr, path string) string {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return string(raw)
}

// owner is which of the workers at addrs serves partition 0 alone; -1
// while not exactly one does.
func owner(addrs []string) int {
	found := -1
	for i, a := range addrs {
		if slices.Contains(served(a), 0) {
			if found >= 0 {
				return -1
			}
			found = i
		}
	}
	return found
}

// The keys every worker trusts are the operator's. Workers W1 and W2 run
// with key A; while the standby W2 is frozen, the operator rotates to A+B
// and then B alone (retiring A); W3 starts last with the old A-only file.
// W3 says its file differs and changes nothing: a retired A token is
// refused on every worker, at the endpoints and in the stream, and B
// tokens work. Then the owner dies and W2 wakes: whoever takes the
// partition over judges the commands of the rotation as the owner did (it
// reads the history again before it judges any), so the passkey removed
// under key B stays removed, the repeat of that removal gets its first
// reply, the next removal takes the next sequence, and the events stream
// tells each change once.
func TestKeyRotationWithSeveralWorkers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	ns := testenv.StartNATSWithUsers(t, "../../nats.conf")
	keys := testenv.NewKeys(t)
	fileA, fileAB, fileB := writeKeySet(t, keys, "EdDSA"), writeKeySet(t, keys, "EdDSA", "ES256"), writeKeySet(t, keys, "ES256")
	provision(t, ns.ClientURL(), fileA, "--partitions", "1")
	bin := buildWorker(t)
	workerURL := testenv.UserURL(ns.ClientURL(), "passkeys-worker")
	adminNC := connectAs(t, ns, "passkeys-admin", testenv.Passwords["passkeys-admin"]).nc
	startWith := func(jwks string) (*process, string) {
		e := &env{url: workerURL, keys: &testenv.Keys{JWKSPath: jwks}, dataDir: t.TempDir()}
		addr := testenv.FreeAddr(t)
		return e.startProcess(t, bin, "--create-stream=false", "--partitions", "1", "--http-listen", addr, "--log-level", "info"), addr
	}
	w1, addr1 := startWith(fileA)
	w2, addr2 := startWith(fileA)
	procs, addrs := []*process{w1, w2}, []string{addr1, addr2}
	waitWithin(t, 30*time.Second, func() bool { return owner(addrs) >= 0 })
	o := owner(addrs)
	standby := 1 - o
	tokA := testenv.Bearer(keys.Mint(t, testenv.Token{Kid: "EdDSA", Subject: "admin", Org: "org1", Scopes: []string{admin}, TTL: time.Hour}))
	tokB := testenv.Bearer(keys.Mint(t, testenv.Token{Kid: "ES256", Subject: "admin", Org: "org1", Scopes: []string{admin}, TTL: time.Hour}))
	testenv.WantSuccess(t, ask(t, adminNC, "passkeys.sync.u1", tokA, "sync-1", syncBody(true, "pk-1", "pk-2", "pk-3"), 20*time.Second))

	// The standby is frozen through the whole rotation.
	if err := procs[standby].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	provision(t, ns.ClientURL(), fileAB, "--partitions", "1")
	provision(t, ns.ClientURL(), fileB, "--partitions", "1")
	waitWithin(t, 30*time.Second, func() bool {
		r := ask(t, adminNC, "passkeys.list.u1", tokA, "", nil, 20*time.Second)
		return strings.Contains(string(r.Data), "AUTH-KEY-UNKNOWN")
	})

	// The last worker to start has the stale file: it says so, and trusts
	// the history.
	w3, addr3 := startWith(fileA)
	waitWithin(t, 30*time.Second, func() bool {
		text := tryGet(addr3, "/metrics")
		return strings.Contains(text, "passkeys_jwks_file_differs 1\n") && regexp.MustCompile(`(?m)^passkeys_key_set_seq [1-9]`).MatchString(text)
	})
	first := ask(t, adminNC, "passkeys.remove.u1", tokB, "rm-1", map[string]any{"tokenId": "pk-1"}, 20*time.Second)
	if got := testenv.WantSuccess(t, first); got.Details.Sequence != "2" {
		t.Fatalf("the B-signed removal: sequence %s, want 2", got.Details.Sequence)
	}
	for range 6 { // several requests: each worker's endpoint answers some
		testenv.WantError(t, ask(t, adminNC, "passkeys.remove.u1", tokA, "", map[string]any{"tokenId": "pk-2"}, 20*time.Second),
			16, "AUTH-KEY-UNKNOWN", "401")
	}
	testenv.WantError(t, streamRequest(t, adminNC, "passkeys.cmd.remove.u1", tokA, "rm-retired", `{"tokenId":"pk-2"}`), 16, "AUTH-KEY-UNKNOWN", "401")

	// The owner dies; the frozen standby wakes; the partition is taken over.
	if err := procs[o].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = procs[o].cmd.Wait()
	if err := procs[standby].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitWithin(t, 40*time.Second, func() bool { return owner([]string{addrs[standby], addr3}) >= 0 })
	list := ask(t, adminNC, "passkeys.list.u1", tokB, "", nil, 20*time.Second)
	if strings.Contains(string(list.Data), `"pk-1"`) || !strings.Contains(string(list.Data), `"pk-2"`) ||
		!strings.Contains(string(list.Data), `"processedSequence":"2"`) {
		t.Fatalf("after the takeover, u1 lists %s: the removal confirmed under key B was undone, or the retired key's applied", list.Data)
	}
	if again := ask(t, adminNC, "passkeys.remove.u1", tokB, "rm-1", map[string]any{"tokenId": "pk-1"}, 20*time.Second); !bytes.Equal(again.Data, first.Data) {
		t.Fatalf("the repeat of the B-signed removal: %s, first reply %s", again.Data, first.Data)
	}
	if got := testenv.WantSuccess(t, ask(t, adminNC, "passkeys.remove.u1", tokB, "rm-2", map[string]any{"tokenId": "pk-2"}, 20*time.Second)); got.Details.Sequence != "3" {
		t.Fatalf("the next removal: sequence %s, want 3", got.Details.Sequence)
	}
	// Each change's event once, in order.
	js, err := jetstream.New(adminNC)
	if err != nil {
		t.Fatal(err)
	}
	events, err := js.OrderedConsumer(context.Background(), "PASSKEYS_EVENTS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"passkeys.events.u1"}})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	waitWithin(t, 20*time.Second, func() bool {
		batch, err := events.FetchNoWait(10)
		if err != nil {
			return false
		}
		for m := range batch.Messages() {
			var ev struct {
				ID   string
				Data struct{ TokenID string }
			}
			_ = json.Unmarshal(m.Data(), &ev)
			ids = append(ids, ev.ID+"/"+ev.Data.TokenID)
		}
		return len(ids) >= 3
	})
	if want := []string{"u1:1/", "u1:2/pk-1", "u1:3/pk-2"}; !slices.Equal(ids, want) {
		t.Fatalf("u1's events %v, want %v", ids, want)
	}
	for _, p := range []*process{procs[standby], w3} {
		p.stop(t)
	}
}

// Right after `worker provision --jwks` retires a key, a command stored
// after its control entry with the retired key's token is refused, and one
// with the new key's token accepted: a key set is in force from its place
// in the stream, with no margin of time and no clock of a server. An
// endpoint accepts the new key's token at once too.
func TestRotationTakesEffectAtItsPlaceInTheStream(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a worker process")
	}
	ns := testenv.StartNATSWithUsers(t, "../../nats.conf")
	keys := testenv.NewKeys(t)
	fileA, fileB := writeKeySet(t, keys, "EdDSA"), writeKeySet(t, keys, "ES256")
	provision(t, ns.ClientURL(), fileA, "--partitions", "1")
	e := &env{url: testenv.UserURL(ns.ClientURL(), "passkeys-worker"), keys: &testenv.Keys{JWKSPath: fileA}, dataDir: t.TempDir()}
	w := e.startProcess(t, buildWorker(t), "--create-stream=false", "--partitions", "1")
	adminNC := connectAs(t, ns, "passkeys-admin", testenv.Passwords["passkeys-admin"]).nc
	tokA := testenv.Bearer(keys.Mint(t, testenv.Token{Kid: "EdDSA", Subject: "admin", Org: "org1", Scopes: []string{admin}, TTL: time.Hour}))
	tokB := testenv.Bearer(keys.Mint(t, testenv.Token{Kid: "ES256", Subject: "admin", Org: "org1", Scopes: []string{admin}, TTL: time.Hour}))
	synced := ask(t, adminNC, "passkeys.sync.u1", tokA, "sync-1", syncBody(true, "pk-1", "pk-2"), 20*time.Second)
	testenv.WantSuccess(t, synced)

	provision(t, ns.ClientURL(), fileB, "--partitions", "1")
	// The sync asked again with the same id, now with the new key's token
	// (the same principal): its first reply, not MSGID-REUSED, although
	// the key that signed the original is retired.
	if again := ask(t, adminNC, "passkeys.sync.u1", tokB, "sync-1", syncBody(true, "pk-1", "pk-2"), 20*time.Second); !bytes.Equal(again.Data, synced.Data) {
		t.Fatalf("the sync asked again after the rotation: %s, first reply %s", again.Data, synced.Data)
	}
	// An endpoint that has not polled the new set yet reads it before it
	// refuses a token of the new key.
	if r := ask(t, adminNC, "passkeys.list.u1", tokB, "", nil, 20*time.Second); !strings.Contains(string(r.Data), `"pk-2"`) {
		t.Fatalf("a list with the new key's token right after the rotation: %s", r.Data)
	}
	testenv.WantError(t, streamRequest(t, adminNC, "passkeys.cmd.remove.u1", tokA, "rm-retired", `{"tokenId":"pk-1"}`), 16, "AUTH-KEY-UNKNOWN", "401")
	if got := testenv.WantSuccess(t, streamRequest(t, adminNC, "passkeys.cmd.remove.u1", tokB, "rm-new", `{"tokenId":"pk-2"}`)); got.Details.Sequence != "2" {
		t.Fatalf("the removal under the new key: sequence %s, want 2", got.Details.Sequence)
	}
	w.stop(t)
}

// A stale owner never overwrites a newer snapshot. F1 (which writes
// snapshots only when it lets go) removes pk-1 and is frozen; F2 takes over,
// removes pk-2 and writes its snapshot; F1 is told to stop and wakes: it
// lost its lease, so it writes nothing, and had it written its older
// snapshot, F2's newer one would still be the newest. Once the removals
// have left the stream (purged, as MaxAge would drop them), a fresh worker
// on an empty data directory can rebuild the partition only from F2's
// snapshot: it serves it, and pk-2 stays removed.
func TestStaleOwnerNeverOverwritesASnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	bin := buildWorker(t)
	ns := testenv.StartNATS(t)
	keys := testenv.NewKeys(t)
	nc := testenv.Connect(t, ns.ClientURL())
	// Worker ids that make F1 the partition's owner while both run.
	ids := []string{"f-one", "f-two"}
	if !slices.Contains(partition.OwnedAvoiding(ids[0], ids, 1, nil), 0) {
		ids[0], ids[1] = ids[1], ids[0]
	}
	start := func(id, interval string) (*process, string) {
		e := &env{url: ns.ClientURL(), keys: keys, dataDir: t.TempDir()}
		if id != "" {
			if err := os.WriteFile(filepath.Join(e.dataDir, "worker-id"), []byte(id+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		addr := testenv.FreeAddr(t)
		return e.startProcess(t, bin, "--partitions", "1", "--outcome-retention", "15s", "--duplicate-window", "5s",
			"--snapshot-interval", interval, "--http-listen", addr, "--log-level", "debug"), addr
	}
	f1, addr1 := start(ids[0], "1h")
	f2, addr2 := start(ids[1], "500ms")
	waitWithin(t, 30*time.Second, func() bool { return owner([]string{addr1, addr2}) == 0 })
	tok := testenv.Bearer(keys.Mint(t, testenv.Token{Subject: "admin", Org: "org1", Scopes: []string{admin}, TTL: time.Hour}))
	testenv.WantSuccess(t, ask(t, nc, "passkeys.sync.u1", tok, "sync-1", syncBody(true, "pk-1", "pk-2", "pk-3"), 20*time.Second))
	testenv.WantSuccess(t, ask(t, nc, "passkeys.remove.u1", tok, "rm-1", map[string]any{"tokenId": "pk-1"}, 20*time.Second))
	if err := f1.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitWithin(t, 30*time.Second, func() bool { return slices.Contains(served(addr2), 0) })
	testenv.WantSuccess(t, ask(t, nc, "passkeys.remove.u1", tok, "rm-2", map[string]any{"tokenId": "pk-2"}, 30*time.Second))
	waitWithin(t, 20*time.Second, func() bool {
		var st struct {
			Served []struct{ AppliedSeq, SnapshotSeq uint64 }
		}
		return json.Unmarshal([]byte(tryGet(addr2, "/partitions")), &st) == nil && len(st.Served) == 1 &&
			st.Served[0].AppliedSeq == 4 && st.Served[0].SnapshotSeq == 4
	})

	// The stale owner is told to stop, and wakes.
	if err := f1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := f1.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := f1.cmd.Wait(); err != nil {
		t.Fatalf("the woken owner's exit: %v", err)
	}
	if log := readFile(t, f1.log.Name()); strings.Contains(log, "snapshot written") {
		t.Errorf("the woken owner wrote a snapshot after it lost its lease")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// The removals leave the stream, as they do at MaxAge (the outcome
	// retention): purged here rather than waited for. The control entries
	// stay, as they do at MaxAge.
	st, err := js.Stream(context.Background(), "PASSKEYS")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(context.Background(), jetstream.WithPurgeSubject("passkeys.part.*.*.*")); err != nil {
		t.Fatal(err)
	}
	f2.stop(t)
	f3, addr3 := start("", "1h")
	waitWithin(t, 30*time.Second, func() bool { return slices.Contains(served(addr3), 0) })
	list := ask(t, nc, "passkeys.list.u1", tok, "", nil, 20*time.Second)
	if strings.Contains(string(list.Data), `"pk-1"`) || strings.Contains(string(list.Data), `"pk-2"`) || !strings.Contains(string(list.Data), `"pk-3"`) {
		t.Fatalf("a fresh worker lists %s: a confirmed removal was undone", list.Data)
	}
	f3.stop(t)
}

// A woken owner answers nothing from its old state. The owner is frozen,
// the other worker takes the partition over and a removal is confirmed;
// list requests sent then (half of them to the frozen owner's endpoint,
// where they wait) are answered after the owner wakes: every answer shows
// the removal.
func TestWokenOwnerAnswersNothingStale(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	bin := buildWorker(t)
	ns := testenv.StartNATS(t)
	keys := testenv.NewKeys(t)
	nc := testenv.Connect(t, ns.ClientURL())
	var procs []*process
	var addrs []string
	for range 2 {
		e := &env{url: ns.ClientURL(), keys: keys, dataDir: t.TempDir()}
		addr := testenv.FreeAddr(t)
		procs, addrs = append(procs, e.startProcess(t, bin, "--partitions", "1", "--http-listen", addr)), append(addrs, addr)
	}
	waitWithin(t, 30*time.Second, func() bool { return owner(addrs) >= 0 })
	o := owner(addrs)
	tok := testenv.Bearer(keys.Mint(t, testenv.Token{Subject: "admin", Org: "org1", Scopes: []string{admin}, TTL: time.Hour}))
	testenv.WantSuccess(t, ask(t, nc, "passkeys.sync.u1", tok, "sync-1", syncBody(true, "pk-1", "pk-2"), 20*time.Second))
	if err := procs[o].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitWithin(t, 30*time.Second, func() bool { return slices.Contains(served(addrs[1-o]), 0) })
	testenv.WantSuccess(t, ask(t, nc, "passkeys.remove.u1", tok, "rm-1", map[string]any{"tokenId": "pk-1"}, 30*time.Second))

	const n = 40
	var wg sync.WaitGroup
	answers := make(chan *nats.Msg, n)
	for range n {
		wg.Go(func() {
			msg := nats.NewMsg("passkeys.list.u1")
			msg.Header.Set("Authorization", tok)
			if r, err := nc.RequestMsg(msg, 20*time.Second); err == nil {
				answers <- r
			}
		})
	}
	if err := nc.Flush(); err != nil { // every request is with the server, half on their way to the frozen owner
		t.Fatal(err)
	}
	if err := procs[o].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(answers)
	got := 0
	for r := range answers {
		got++
		if strings.Contains(string(r.Data), `"pk-1"`) || !strings.Contains(string(r.Data), `"processedSequence":"2"`) {
			t.Errorf("a list answered after the removal was confirmed shows the state before it: %s", r.Data)
		}
	}
	if got < n/2 {
		t.Fatalf("only %d of %d lists were answered", got, n)
	}
}

// A frozen worker (it stopped answering without closing its connection) is
// dropped by the server of the shipped nats.conf within 20 s, its
// partitions are served by the other worker, and from then on every
// request is answered at its first try.
func TestFrozenWorkerIsDropped(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	ns := testenv.StartNATSWithUsers(t, "../../nats.conf")
	keys := testenv.NewKeys(t)
	provision(t, ns.ClientURL(), keys.JWKSPath)
	bin := buildWorker(t)
	var procs []*process
	var addrs []string
	for range 2 {
		e := &env{url: testenv.UserURL(ns.ClientURL(), "passkeys-worker"), keys: keys, dataDir: t.TempDir()}
		addr := testenv.FreeAddr(t)
		procs, addrs = append(procs, e.startProcess(t, bin, "--create-stream=false", "--http-listen", addr)), append(addrs, addr)
	}
	waitWithin(t, 30*time.Second, func() bool { return allServed(addrs) })
	service := connectAs(t, ns, "passkeys-service", testenv.Passwords["passkeys-service"]).nc
	adminNC := connectAs(t, ns, "passkeys-admin", testenv.Passwords["passkeys-admin"]).nc
	adminTok := testenv.Bearer(keys.Mint(t, testenv.Token{Subject: "admin", Org: "org1", Scopes: []string{admin}, TTL: time.Hour}))
	users := []string{"u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"}
	for _, u := range users {
		testenv.WantSuccess(t, ask(t, adminNC, "passkeys.sync."+u, adminTok, "sync-"+u, syncBody(true, "pk-1", "pk-2"), 20*time.Second))
	}
	workers := func() int {
		cz, err := ns.Connz(&server.ConnzOptions{Username: true})
		if err != nil {
			return -1
		}
		n := 0
		for _, c := range cz.Conns {
			if c.AuthorizedUser == "passkeys-worker" && c.Name == "passkeys-worker" {
				n++
			}
		}
		return n
	}
	if got := workers(); got != 2 {
		t.Fatalf("%d worker connections, want 2", got)
	}
	if err := procs[0].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	t.Cleanup(func() { _ = procs[0].cmd.Process.Signal(syscall.SIGCONT) })
	waitWithin(t, 40*time.Second, func() bool { return workers() == 1 })
	if d := time.Since(frozen); d > 20*time.Second {
		t.Errorf("the server dropped the frozen worker after %s, more than 20 s", d.Round(time.Second))
	}
	waitWithin(t, 30*time.Second, func() bool { return len(served(addrs[1])) == 8 })
	for _, u := range users {
		msg := nats.NewMsg("passkeys.remove." + u)
		msg.Header.Set("Authorization", testenv.Bearer(keys.Mint(t, testenv.Token{Subject: u, TTL: time.Hour})))
		msg.Data = []byte(`{"tokenId":"pk-1"}`)
		reply, err := service.RequestMsg(msg, 5*time.Second)
		if errors.Is(err, nats.ErrTimeout) || err != nil {
			t.Fatalf("a removal %s after the freeze, at its first try: %v", time.Since(frozen).Round(time.Second), err)
		}
		testenv.WantSuccess(t, reply)
	}
	if d := time.Since(frozen); d > 30*time.Second {
		t.Errorf("requests were answered only %s after the freeze, more than 30 s", d.Round(time.Second))
	}
}
