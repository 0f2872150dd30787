package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
)

// testLeaseTTL is the TTL of the lease buckets the tests' workers and
// provisioners make: the shortest a worker takes (topology.MinLeaseTTL),
// half the production one, so that a partition whose holder stopped moves
// in about 3 s, not 6 (timing as configuration).
const testLeaseTTL = "3s"

// testAckWait is the partition consumers' ack wait in the tests: the
// shortest a worker takes (topology.MinAckWait), so that the commands a
// killed worker held come back in 4 s, not 10.
const testAckWait = "4s"

// worker is a worker started through run, as main starts it.
type worker struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when run returned, with err set
	err    error
	log    *testenv.SyncBuffer
}

// stop sends the equivalent of SIGTERM and waits for run to return.
func (w *worker) stop(tb testing.TB) {
	tb.Helper()
	w.cancel()
	select {
	case <-w.done:
		if w.err != nil {
			tb.Fatalf("worker exited with %v\n%s", w.err, w.log)
		}
	case <-time.After(30 * time.Second):
		tb.Fatal("worker did not stop")
	}
}

// env is a NATS server, keys, and a worker on a data directory.
type env struct {
	url     string
	keys    *testenv.Keys
	dataDir string
	nc      *nats.Conn
	w       *worker
	// productionTiming starts the worker without the tests' timing.
	productionTiming bool
}

func newEnv(tb testing.TB, extra ...string) *env {
	tb.Helper()
	return newEnvTimed(tb, true, extra...)
}

// newEnvTimed is newEnv, its worker with the tests' timing
// (testLeaseTTL, testAckWait) or, testTiming false, the production
// defaults.
func newEnvTimed(tb testing.TB, testTiming bool, extra ...string) *env {
	tb.Helper()
	ns := testenv.StartNATS(tb)
	// A directory the worker creates, as on a fresh machine.
	e := &env{url: ns.ClientURL(), keys: testenv.NewKeys(tb), dataDir: filepath.Join(tb.TempDir(), "data"), productionTiming: !testTiming}
	e.nc = testenv.Connect(tb, e.url)
	e.w = e.startWorker(tb, extra...)
	return e
}

func (e *env) startWorker(tb testing.TB, extra ...string) *worker {
	tb.Helper()
	args := []string{
		"--nats-url", e.url, "--jwks", e.keys.JWKSPath, "--issuer", testenv.Issuer, "--audience", testenv.Audience,
		"--data-dir", e.dataDir, "--log-level", "debug",
	}
	if !e.productionTiming {
		args = append(args, "--lease-ttl", testLeaseTTL, "--ack-wait", testAckWait)
	}
	args = append(args, extra...)
	ctx, cancel := context.WithCancel(context.Background())
	w := &worker{cancel: cancel, done: make(chan struct{}), log: &testenv.SyncBuffer{}}
	go func() {
		defer close(w.done)
		w.err = run(ctx, args, func(string) string { return "" }, w.log, w.log)
	}()
	tb.Cleanup(func() {
		cancel()
		<-w.done
		checkLog(tb, w.log.String())
		if tb.Failed() {
			tb.Logf("worker log:\n%s", w.log)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		// Started once its endpoints answer (a micro service answers its
		// PING before it has added them): a list without a token is refused
		// at once, whatever the partitions.
		if _, err := e.nc.Request("passkeys.list.started", nil, 200*time.Millisecond); err == nil {
			return w
		}
		select {
		case <-w.done:
			tb.Fatalf("worker exited at start: %v\n%s", w.err, w.log)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("worker did not start\n%s", w.log)
		}
	}
}

// checkLog holds the worker's log to the contract: one JSON line per event,
// each with a level, a time and a message, and no token in any of them
// (every JWT's header starts with base64 of `{"`, "eyJ").
func checkLog(tb testing.TB, log string) {
	tb.Helper()
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if line == "" || strings.HasPrefix(line, "worker: ") { // run's own error line, from main
			continue
		}
		var ev struct{ Level, Time, Message string }
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Level == "" || ev.Time == "" || ev.Message == "" {
			tb.Errorf("log line is not a JSON event: %.200s", line)
			return
		}
	}
	if strings.Contains(log, "eyJ") {
		tb.Error("the worker's log holds a token")
	}
}

// token mints a token for sub; admin scopes it to org.
func (e *env) token(tb testing.TB, sub string, scopes ...string) string {
	tb.Helper()
	org := ""
	if len(scopes) > 0 {
		org = "org1"
	}
	return testenv.Bearer(e.keys.Mint(tb, testenv.Token{Subject: sub, Org: org, Scopes: scopes}))
}

// request sends a core NATS request, as nc.Request or `nats req` would.
func (e *env) request(tb testing.TB, subject, auth string, body any, hdr ...string) *nats.Msg {
	tb.Helper()
	msg := nats.NewMsg(subject)
	if auth != "" {
		msg.Header.Set("Authorization", auth)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		msg.Header.Add(hdr[i], hdr[i+1])
	}
	msg.Data = encode(tb, body)
	reply, err := e.nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		tb.Fatalf("request %s: %v", subject, err)
	}
	return reply
}

// streamClient is what a batch publisher holds: a JetStream client and an
// inbox subscription for the replies its Reply-To headers ask for.
func (e *env) streamClient(tb testing.TB) (jetstream.JetStream, string, *nats.Subscription) {
	tb.Helper()
	js, err := jetstream.New(e.nc)
	if err != nil {
		tb.Fatal(err)
	}
	inbox := nats.NewInbox()
	sub, err := e.nc.SubscribeSync(inbox)
	if err != nil {
		tb.Fatal(err)
	}
	return js, inbox, sub
}

func encode(tb testing.TB, body any) []byte {
	tb.Helper()
	switch b := body.(type) {
	case nil:
		return nil
	case string:
		return []byte(b)
	case []byte:
		return b
	}
	raw, err := json.Marshal(body)
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// syncBody is a sync request for a user of org1.
func syncBody(password bool, passkeys ...string) map[string]any {
	var pks []map[string]string
	for _, id := range passkeys {
		pks = append(pks, map[string]string{"id": id, "name": "key " + id, "state": "ready"})
	}
	return map[string]any{"resourceOwner": "org1", "password": password, "passkeys": pks}
}

// httpGet is the status and body of the worker's HTTP path at addr.
func httpGet(tb testing.TB, addr, path string) (int, string) {
	tb.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// streamRequest publishes a command straight into the stream, as a batch
// publisher does, with Reply-To an inbox of nc (its own prefix) and, when
// msgID is set, a Nats-Msg-Id; it returns the worker's reply.
func streamRequest(tb testing.TB, nc *nats.Conn, subject, auth, msgID, body string) *nats.Msg {
	tb.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		tb.Fatal(err)
	}
	defer sub.Unsubscribe()
	msg := nats.NewMsg(subject)
	msg.Header.Set("Authorization", auth)
	msg.Header.Set("Reply-To", inbox)
	if msgID != "" {
		msg.Header.Set(nats.MsgIdHdr, msgID)
	}
	msg.Data = []byte(body)
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		tb.Fatal(err)
	}
	reply, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	return reply
}

// partitionsSettled tells whether every partition's consumer has nothing
// pending or unacknowledged: each command was applied and replied to.
func partitionsSettled(js jetstream.JetStream) bool {
	for p := range 8 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		info, err := js.Consumer(ctx, "PASSKEYS", fmt.Sprintf("passkeys-worker-p%03d", p))
		if err == nil {
			var ci *jetstream.ConsumerInfo
			if ci, err = info.Info(ctx); err == nil && (ci.NumPending != 0 || ci.NumAckPending != 0) {
				cancel()
				return false
			}
		}
		cancel()
		if err != nil {
			return false
		}
	}
	return true
}

// storeUntilStored returns a function that publishes a command (with
// auth, Reply-To and Nats-Msg-Id) until JetStream has it, retrying with the
// same Nats-Msg-Id through an outage: a retry of a stored one is a
// duplicate.
func storeUntilStored(t *testing.T, js jetstream.JetStream, auth string) func(subject, replyTo, msgID string, body any) {
	return func(subject, replyTo, msgID string, body any) {
		msg := nats.NewMsg(subject)
		msg.Header.Set("Authorization", auth)
		msg.Header.Set("Reply-To", replyTo)
		msg.Header.Set(nats.MsgIdHdr, msgID)
		msg.Data = encode(t, body)
		for deadline := time.Now().Add(60 * time.Second); ; {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := js.PublishMsg(ctx, msg)
			cancel()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("publish %s: %v", msgID, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// askAgainForLost asks, through the endpoint with the same Nats-Msg-Id
// (idOf), for each of total removals (removal k took passkey k/users of
// user k%users) that got no reply, files the answer, and returns how many
// it asked for.
func askAgainForLost(t *testing.T, nc *nats.Conn, removals *replies, users, total int, auth string, idOf func(k int) string) int {
	t.Helper()
	lost := 0
	for k := range total {
		removals.mu.Lock()
		_, ok := removals.got[k]
		removals.mu.Unlock()
		if ok {
			continue
		}
		lost++
		msg := nats.NewMsg("passkeys.remove.user-" + strconv.Itoa(k%users))
		msg.Header.Set("Authorization", auth)
		msg.Header.Set(nats.MsgIdHdr, idOf(k))
		msg.Data = encode(t, map[string]any{"tokenId": "pk-" + strconv.Itoa(k/users)})
		data := askUntilAvailable(t, nc, msg, k)
		removals.mu.Lock()
		removals.got[k] = append(removals.got[k], data)
		removals.mu.Unlock()
	}
	return lost
}

// askUntilAvailable sends msg until its answer is not UNAVAILABLE (code
// 14: no worker serves the partition at the moment, or the outcome is not
// known yet), as the client package does, for at most a minute; it returns
// the last answer.
func askUntilAvailable(t *testing.T, nc *nats.Conn, msg *nats.Msg, k int) []byte {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		reply, err := nc.RequestMsg(msg, 15*time.Second)
		if err != nil {
			t.Fatalf("asking again for removal %d: %v", k, err)
		}
		if !strings.Contains(string(reply.Data), `"code":14`) || time.Now().After(deadline) {
			return reply.Data
		}
		t.Logf("removal %d asked again: %s; asking once more", k, reply.Data)
	}
}
