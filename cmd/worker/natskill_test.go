package main

import (
	"context"
	"errors"
	"fmt"
	"net"
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
	"github.com/passkeys/worker/passkey"
)

// natsServer is nats-server, built from the module this project depends
// on, run as a process of its own so that it can be killed.
type natsServer struct {
	bin, storeDir, addr string
	proc                *serverProcess
}

func buildNATSServer(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "nats-server")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput()
	if err != nil {
		tb.Fatalf("go build nats-server: %v\n%s", err, out)
	}
	return bin
}

func (s *natsServer) start(tb testing.TB) {
	tb.Helper()
	host, port, _ := net.SplitHostPort(s.addr)
	p, err := startServerProcess(tb, s.bin, s.addr, filepath.Join(s.storeDir, "nats-server.log"), "Server is ready",
		"-js", "-sd", s.storeDir, "-a", host, "-p", port)
	if err != nil {
		tb.Fatal(err)
	}
	s.proc = p
}

func (s *natsServer) kill(tb testing.TB) {
	tb.Helper()
	s.proc.kill(tb)
}

// serverProcess is a nats-server process of a test, with its output in a
// file so that a failure can say what the server said.
type serverProcess struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
	log  string
}

// errPortTaken is a server that exited because another process took one
// of its ports between testenv.FreeAddr and the server's start.
var errPortTaken = errors.New("a port was taken")

// startServerProcess starts bin with args and returns once the server
// accepts connections on addr and has said ready in its log (a clustered
// server listens for clients before it binds its route port, and exits
// if that is taken), or with an error that quotes its output's end if it
// exits first or is not ready within a minute (the suite runs beside
// other packages' tests on two cores).
func startServerProcess(tb testing.TB, bin, addr, logPath, ready string, args ...string) (*serverProcess, error) {
	tb.Helper()
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer out.Close()
	st, err := out.Stat() // a restart appends: only what this run says counts
	if err != nil {
		tb.Fatal(err)
	}
	p := &serverProcess{cmd: exec.Command(bin, args...), done: make(chan struct{}), log: logPath}
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(p.stop)
	for deadline := time.Now().Add(time.Minute); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			if raw, _ := os.ReadFile(logPath); strings.Contains(string(raw[min(st.Size(), int64(len(raw))):]), ready) {
				return p, nil
			}
		}
		select {
		case <-p.done:
			said := p.tail()
			if strings.Contains(said, "address already in use") {
				return nil, fmt.Errorf("%w: %s", errPortTaken, said)
			}
			return nil, fmt.Errorf("nats-server exited before it listened on %s: %s", addr, said)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("nats-server did not listen on %s within a minute: %s", addr, p.tail())
		}
	}
}

// tail is the end of what the server wrote.
func (p *serverProcess) tail() string {
	raw, _ := os.ReadFile(p.log)
	return string(raw[max(0, len(raw)-2000):])
}

// kill ends the process at once (SIGKILL) and waits for it.
func (p *serverProcess) kill(tb testing.TB) {
	tb.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		tb.Fatal(err)
	}
	<-p.done
}

func (p *serverProcess) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGCONT) // a frozen server first wakes
	_ = p.cmd.Process.Kill()
	<-p.done
}

// The NATS server killed and restarted on the same store in the middle of
// a batch revocation: the worker reconnects by itself, and every removal is
// still applied exactly once, with every user's sequence intact. Replies
// lost with the server are asked for again with the same Nats-Msg-Id, and
// repeats are byte-identical.
func TestNATSServerKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills a NATS server process")
	}
	const users, perUser = 1000, 10
	addr := testenv.FreeAddr(t)
	srv := &natsServer{bin: buildNATSServer(t), storeDir: t.TempDir(), addr: addr}
	srv.start(t)

	e := &env{url: "nats://" + addr, keys: testenv.NewKeys(t), dataDir: t.TempDir()}
	nc, err := nats.Connect(e.url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e.nc = nc
	proc := e.startProcess(t, buildWorker(t))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, js)
	admin := e.token(t, "admin", "passkeys:admin")

	storeCommand := storeUntilStored(t, js, admin)

	syncUsers(t, nc, storeCommand, users, perUser)

	removals := &replies{got: map[int][][]byte{}}
	inbox := collect(t, nc, removals)
	total := users * perUser
	// Ids scoped to the administrator, as publisher revoke scopes them, so
	// that asking again through the endpoint finds the stored outcome.
	msgID := func(k int) string { return passkey.ScopeMsgID(testenv.Issuer, "admin", "rm-"+strconv.Itoa(k)) }
	removal := func(k int) (string, string, string, any) {
		return "passkeys.cmd.remove.user-" + strconv.Itoa(k%users), inbox + "." + strconv.Itoa(k), msgID(k),
			map[string]any{"tokenId": "pk-" + strconv.Itoa(k/users)}
	}
	// The first half in a burst, so the worker has a backlog in hand when
	// the server dies; the rest through the outage and after.
	for k := range total / 2 {
		subject, replyTo, msgID, body := removal(k)
		publish(t, js, subject, admin, replyTo, msgID, body)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("burst not acknowledged")
	}
	srv.kill(t)
	t.Logf("killed the NATS server with %d replies of %d stored", removals.count(), total/2)
	waitFor(t, func() bool { // the worker has noticed the outage
		raw, _ := os.ReadFile(proc.log.Name())
		return strings.Contains(string(raw), "disconnected from NATS")
	})
	srv.start(t)
	for k := total / 2; k < total; k++ {
		storeCommand(removal(k))
	}

	// Wait for the worker to finish (its consumer has nothing pending or
	// unacknowledged: a reply is sent before its ack), take in every reply
	// routed before that (a flush), then ask again, through the endpoint,
	// for the replies lost with the server.
	waitWithin(t, 60*time.Second, func() bool { return partitionsSettled(js) })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	lost := askAgainForLost(t, nc, removals, users, total, admin, msgID)
	t.Logf("%d replies were lost with the server and asked for again", lost)

	// The events of the changes made around the outage all arrive, one per
	// change, each user's in order.
	verifyEvents(t, js, users, 1+perUser)

	proc.stop(t)
	verifyExactlyOnce(t, removals, users, perUser, e.dataDir)
}

// verifyEvents waits for stream PASSKEYS_EVENTS to hold perUser events of
// each of users users (user-0 ...), and checks that each user's are its
// sequences 1..perUser, in order, once each.
func verifyEvents(t *testing.T, js jetstream.JetStream, users, perUser int) {
	t.Helper()
	ctx := context.Background()
	stream, err := js.Stream(ctx, "PASSKEYS_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	waitWithin(t, 60*time.Second, func() bool {
		info, err := stream.Info(ctx)
		return err == nil && info.State.Msgs >= uint64(users*perUser)
	})
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	next := map[string]int{}
	for read := 0; read < users*perUser; {
		batch, err := cons.FetchNoWait(1000)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			user, seq, _ := strings.Cut(m.Headers().Get("Nats-Msg-Id"), ":")
			next[user]++
			if seq != strconv.Itoa(next[user]) {
				t.Fatalf("%s's event %s came as its %d-th", user, m.Headers().Get("Nats-Msg-Id"), next[user])
			}
		}
		if n == 0 {
			break
		}
		read += n
	}
	if len(next) != users {
		t.Fatalf("events of %d users, want %d", len(next), users)
	}
	for user, n := range next {
		if n != perUser {
			t.Fatalf("%s has %d events, want %d", user, n, perUser)
		}
	}
}
