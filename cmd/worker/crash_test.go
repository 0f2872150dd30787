package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// buildWorker compiles this command once per test binary.
func buildWorker(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "passkeys-worker-bin"); buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, "worker"), ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return filepath.Join(binDir, "worker")
}

// process is a worker binary running against e's NATS server and data directory.
type process struct {
	cmd *exec.Cmd
	log *os.File
}

// stop stops the worker with SIGTERM and fails unless it exits 0.
func (p *process) stop(tb testing.TB) {
	tb.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		tb.Fatal(err)
	}
	if err := p.cmd.Wait(); err != nil {
		tb.Fatalf("worker exit after SIGTERM: %v", err)
	}
}

func (e *env) startProcess(tb testing.TB, bin string, extra ...string) *process {
	tb.Helper()
	return e.startProcessEnv(tb, bin, nil, extra...)
}

// startProcessEnv is startProcess with more environment variables.
func (e *env) startProcessEnv(tb testing.TB, bin string, env []string, extra ...string) *process {
	tb.Helper()
	log, err := os.CreateTemp(tb.TempDir(), "worker-*.log")
	if err != nil {
		tb.Fatal(err)
	}
	args := append([]string{"--nats-url", e.url, "--jwks", e.keys.JWKSPath, "--issuer", testenv.Issuer,
		"--audience", testenv.Audience, "--data-dir", e.dataDir, "--log-level", "warn", "--lease-ttl", testLeaseTTL, "--ack-wait", testAckWait}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &process{cmd: cmd, log: log}
	tb.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
		raw, _ := os.ReadFile(log.Name())
		checkLog(tb, string(raw))
		if tb.Failed() {
			tb.Logf("worker process log:\n%s", raw)
		}
	})
	return p
}

// replies collects every reply to inbox prefix.<k>, keeping repeats.
type replies struct {
	mu  sync.Mutex
	got map[int][][]byte
}

func (r *replies) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// A worker killed with SIGKILL in the middle of a batch revocation loses
// nothing and repeats nothing: every removal is applied exactly once,
// every user's sequence has no gap and no repeat, and every requester gets
// a reply, byte-identical where it gets more than one.
func TestWorkerKilled(t *testing.T) {
	testStoppedMidLoad(t, syscall.SIGKILL)
}

// A worker stopped with SIGTERM under load finishes and acknowledges what it
// holds, exits 0, and its successor loses and repeats nothing.
func TestWorkerTerminated(t *testing.T) {
	testStoppedMidLoad(t, syscall.SIGTERM)
}

// The same with --store-nosync, and store files that then lose what a
// power cut can lose (here: all but their first page, torn): the successor
// takes the stores for what they are, not closed, and rebuilds them from
// the snapshots and the stream.
func TestWorkerKilledWithoutFsync(t *testing.T) {
	testStoppedMidLoad(t, syscall.SIGKILL, "--store-nosync", "--rules", "2")
}

func testStoppedMidLoad(t *testing.T, sig syscall.Signal, extra ...string) {
	if testing.Short() {
		t.Skip("starts and stops worker processes")
	}
	const users, perUser = 2000, 10
	bin := buildWorker(t)
	ns := testenv.StartNATS(t)
	e := &env{url: ns.ClientURL(), keys: testenv.NewKeys(t), dataDir: t.TempDir()}
	e.nc = testenv.Connect(t, e.url)
	proc := e.startProcess(t, bin, extra...)
	js, err := jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(2048))
	if err != nil {
		t.Fatal(err)
	}
	admin := e.token(t, "admin", "passkeys:admin")

	waitReady(t, js)
	syncUsers(t, e.nc, func(subject, replyTo, msgID string, body any) { publish(t, js, subject, admin, replyTo, msgID, body) }, users, perUser)

	removals := &replies{got: map[int][][]byte{}}
	inbox := collect(t, e.nc, removals)
	total := users * perUser
	killed := false
	for k := range total {
		u, j := k%users, k/users
		publish(t, js, "passkeys.cmd.remove.user-"+strconv.Itoa(u), admin, inbox+"."+strconv.Itoa(k), "rm-"+strconv.Itoa(k),
			map[string]any{"tokenId": "pk-" + strconv.Itoa(j)})
		if !killed && k == total/2 {
			// Kill it once it has answered some, mid-stream, mid-batch.
			waitCount(t, removals, total/4, 60*time.Second)
			if err := proc.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			err := proc.cmd.Wait()
			if sig == syscall.SIGTERM && err != nil {
				t.Fatalf("worker exit after SIGTERM under load: %v", err)
			}
			killed = true
			t.Logf("stopped the worker (%v) after %d replies of %d published", sig, removals.count(), k+1)
			if slices.Contains(extra, "--store-nosync") {
				tearStores(t, e.dataDir)
			}
			proc = e.startProcess(t, bin, extra...)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishes not acknowledged")
	}
	waitCount(t, removals, total, 120*time.Second)
	// The commands the killed worker held were answered early by the
	// restarted one (its catch-up); their deliveries come back after the
	// ack wait and are answered again, the same bytes (verifyExactlyOnce).
	waitWithin(t, 60*time.Second, func() bool { return partitionsSettled(js) })
	proc.stop(t)
	restartLog, err := os.ReadFile(proc.log.Name())
	if err != nil {
		t.Fatal(err)
	}
	redelivered := bytes.Count(restartLog, []byte(`"message":"command redelivered"`))
	t.Logf("the restarted worker took %d redelivered commands", redelivered)
	if sig == syscall.SIGKILL && redelivered == 0 {
		// The kill must have caught commands in hand, or this test proves little.
		t.Fatal("no command was redelivered after the kill: the kill caught nothing in hand")
	}
	if early := bytes.Contains(restartLog, []byte(`"message":"answered the commands the holder before was handed and did not acknowledge"`)); sig == syscall.SIGKILL && !early {
		t.Error("the restarted worker did not answer the killed one's commands before their deliveries came back")
	}

	verifyExactlyOnce(t, removals, users, perUser, e.dataDir)
}

// verifyExactlyOnce checks a revocation of perUser removals from each of
// users users (removal k took passkey k/users of user k%users): every
// requester got a reply, repeats are byte-identical, each user's sequences
// 2..perUser+1 were handed out once each, and the store holds each user
// with exactly the passkey no command removed and sequence 1+perUser.
func verifyExactlyOnce(t *testing.T, removals *replies, users, perUser int, dataDir string) {
	t.Helper()
	verifyExactlyOnceIn(t, removals, users, perUser, 8, []string{dataDir})
}

// verifyExactlyOnceIn is verifyExactlyOnce over several workers' data
// directories of a stream split into partitions: each partition's newest
// store among them holds its users.
func verifyExactlyOnceIn(t *testing.T, removals *replies, users, perUser, partitions int, dataDirs []string) {
	t.Helper()
	seqs := map[int]map[string]bool{}
	removals.mu.Lock()
	defer removals.mu.Unlock()
	for k := range users * perUser {
		got := removals.got[k]
		if len(got) == 0 {
			t.Fatalf("removal %d got no reply", k)
		}
		for _, again := range got[1:] {
			if !bytes.Equal(again, got[0]) {
				t.Fatalf("removal %d got different replies:\n%s\n%s", k, got[0], again)
			}
		}
		var r struct{ Details struct{ Sequence string } }
		if err := json.Unmarshal(got[0], &r); err != nil || r.Details.Sequence == "" {
			t.Fatalf("removal %d: %s", k, got[0])
		}
		u := k % users
		if seqs[u] == nil {
			seqs[u] = map[string]bool{}
		}
		if seqs[u][r.Details.Sequence] {
			t.Fatalf("user %d: sequence %s handed out twice", u, r.Details.Sequence)
		}
		seqs[u][r.Details.Sequence] = true
	}
	err := viewUsers(t, dataDirs, partitions, func(id string, got *passkey.User) error {
		var u int
		fmt.Sscanf(id, "user-%d", &u)
		if got == nil || got.Sequence != uint64(1+perUser) || len(got.Passkeys) != 1 || got.Passkeys[0].ID != "pk-"+strconv.Itoa(perUser) {
			return fmt.Errorf("user %d: %+v", u, got)
		}
		return nil
	}, users)
	if err != nil {
		t.Fatal(err)
	}
}

// viewUsers calls f with each user user-0..user-<users-1> as the partition
// stores hold it: in the first of dataDirs whose store of the user's
// partition has applied the most of the stream.
func viewUsers(t *testing.T, dataDirs []string, n int, f func(id string, u *passkey.User) error, users int) error {
	t.Helper()
	stores := make([]*storage.Store, n)
	for p := range stores {
		var best uint64
		for _, dir := range dataDirs {
			path := filepath.Join(dir, "partitions", partition.Name(p)+".db")
			if _, err := os.Stat(path); err != nil {
				continue
			}
			s, err := storage.Open(path, storage.Options{})
			if err != nil {
				return err
			}
			applied, _ := s.AppliedSeq()
			if stores[p] == nil || applied > best {
				if stores[p] != nil {
					stores[p].Close()
				}
				stores[p], best = s, applied
			} else {
				s.Close()
			}
		}
		if stores[p] == nil {
			return fmt.Errorf("no store of partition %d", p)
		}
		defer stores[p].Close()
	}
	for u := range users {
		id := "user-" + strconv.Itoa(u)
		err := stores[partition.Of(id, n)].View(func(tx *storage.Tx) error {
			got, err := tx.User(id)
			if err != nil {
				return err
			}
			return f(id, got)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// syncUsers creates users user-0.. each with a password and perUser+1
// passkeys pk-0..pk-<perUser>, through the stream, and waits for all replies.
func syncUsers(t *testing.T, nc *nats.Conn, store func(subject, replyTo, msgID string, body any), users, perUser int) {
	t.Helper()
	synced := &replies{got: map[int][][]byte{}}
	inbox := collect(t, nc, synced)
	for u := range users {
		pks := make([]map[string]string, perUser+1)
		for j := range pks {
			pks[j] = map[string]string{"id": "pk-" + strconv.Itoa(j), "name": "k", "state": "ready"}
		}
		store("passkeys.cmd.sync.user-"+strconv.Itoa(u), inbox+"."+strconv.Itoa(u), "sync-"+strconv.Itoa(u),
			map[string]any{"resourceOwner": "org1", "password": true, "passkeys": pks})
	}
	waitCount(t, synced, users, 60*time.Second)
}

// waitReady waits until a worker answers $SRV.PING: it has served the
// partitions it took at start.
func waitReady(tb testing.TB, js jetstream.JetStream) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := js.Conn().Request("$SRV.PING.passkeys", nil, time.Second)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no worker answers: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// collect subscribes to <new inbox>.* and files each reply under its <k>.
func collect(tb testing.TB, nc *nats.Conn, r *replies) string {
	tb.Helper()
	prefix := nats.NewInbox()
	sub, err := nc.Subscribe(prefix+".*", func(m *nats.Msg) {
		k, err := strconv.Atoi(m.Subject[len(prefix)+1:])
		if err != nil {
			return
		}
		r.mu.Lock()
		r.got[k] = append(r.got[k], m.Data)
		r.mu.Unlock()
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = sub.Unsubscribe() })
	return prefix
}

func publish(tb testing.TB, js jetstream.JetStream, subject, auth, replyTo, msgID string, body any) {
	tb.Helper()
	msg := nats.NewMsg(subject)
	msg.Header.Set("Authorization", auth)
	msg.Header.Set("Reply-To", replyTo)
	msg.Header.Set(nats.MsgIdHdr, msgID)
	msg.Data = encode(tb, body)
	for {
		_, err := js.PublishMsgAsync(msg)
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			if err != nil {
				tb.Fatal(err)
			}
			return
		}
		// Too many unacknowledged: let them drain, as a batch publisher would.
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			tb.Fatal("async publishes not acknowledged in 30s")
		}
	}
}

func waitCount(tb testing.TB, r *replies, n int, limit time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for r.count() < n {
		if time.Now().After(deadline) {
			tb.Fatalf("%d of %d replies after %s", r.count(), n, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SIGHUP reloads the JWKS at once, without waiting for the file check. The
// embedded default's worker, the only worker, writes its new key set into
// every partition itself; it is in force for every command after it.
func TestJWKSReloadOnSIGHUP(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a worker process")
	}
	bin := buildWorker(t)
	e := &env{keys: testenv.NewKeys(t), dataDir: t.TempDir()} // no --nats-url: the embedded server
	proc := e.startProcess(t, bin, "--listen", "127.0.0.1:0", "--jwks-reload-interval", "1h", "--log-level", "info")
	started := regexp.MustCompile(`"client_url":"(nats://[^"]+)".*"message":"embedded NATS server with JetStream started"`)
	waitFor(t, func() bool {
		m := started.FindStringSubmatch(readFile(t, proc.log.Name()))
		if m != nil {
			e.url = m[1]
		}
		return m != nil
	})
	e.nc = testenv.Connect(t, e.url)
	waitFor(t, func() bool {
		_, err := e.nc.Request("$SRV.PING.passkeys", nil, 200*time.Millisecond)
		return err == nil
	})
	es := testenv.Bearer(e.keys.Mint(t, testenv.Token{Kid: "ES256", Subject: "u1"}))
	testenv.WantError(t, e.request(t, "passkeys.list.u1", es, nil), 7, "PERMISSION-USER", "403") // verified: no such user

	e.keys.WriteJWKS(t, "EdDSA")
	testenv.WantError(t, e.request(t, "passkeys.list.u1", es, nil), 7, "PERMISSION-USER", "403") // not reloaded yet
	if err := proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitWithin(t, 20*time.Second, func() bool {
		return strings.Contains(string(e.request(t, "passkeys.list.u1", es, nil).Data), "AUTH-KEY-UNKNOWN")
	})
	if log := readFile(t, proc.log.Name()); !strings.Contains(log, `"trigger":"SIGHUP"`) || !strings.Contains(log, "key set written into the partitions") {
		t.Fatalf("the reload was not on SIGHUP, or did not write the key set:\n%s", log)
	}
}

// tearStores cuts every partition store in dataDir down to its first 4 KiB
// (what a power cut can leave of writes never fsynced), and fails unless
// each was left marked as open without fsync.
func tearStores(t *testing.T, dataDir string) {
	t.Helper()
	stores, err := filepath.Glob(filepath.Join(dataDir, "partitions", "p*.db"))
	if err != nil || len(stores) == 0 {
		t.Fatalf("no partition store in %s (%v)", dataDir, err)
	}
	for _, path := range stores {
		if !storage.Unclean(path) {
			t.Fatalf("%s: not marked as open without fsync after the kill", path)
		}
		if err := os.Truncate(path, 4096); err != nil {
			t.Fatal(err)
		}
	}
}
