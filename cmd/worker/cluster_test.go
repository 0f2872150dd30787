package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
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
)

// clusterNode is one nats-server process of a three-node JetStream cluster.
type clusterNode struct {
	name, bin, conf, log, addr string
	proc                       *serverProcess
}

// startCluster starts three nats-server processes, clustered, each with
// JetStream on its own store and the shipped nats.conf's pings, and
// returns once each accepts connections; JetStream may not have formed
// yet. A port taken by another process between testenv.FreeAddr and a server's
// start (the suite runs beside other packages' tests) is a new try on
// new ports, not a failure.
func startCluster(t *testing.T) []*clusterNode {
	t.Helper()
	bin := buildNATSServer(t)
	for try := 1; ; try++ {
		nodes, err := tryCluster(t, bin)
		if err == nil {
			return nodes
		}
		for _, n := range nodes {
			if n.proc != nil {
				n.proc.stop()
			}
		}
		if !errors.Is(err, errPortTaken) || try == 3 {
			t.Fatal(err)
		}
		t.Logf("try %d: %v", try, err)
	}
}

func tryCluster(t *testing.T, bin string) ([]*clusterNode, error) {
	var clients, routes []string
	for range 3 {
		clients = append(clients, testenv.FreeAddr(t))
		routes = append(routes, testenv.FreeAddr(t))
	}
	var nodes []*clusterNode
	for i := range 3 {
		dir := t.TempDir()
		var rs []string
		for j, r := range routes {
			if j != i {
				rs = append(rs, "nats-route://"+r)
			}
		}
		host, port, _ := net.SplitHostPort(clients[i])
		rhost, rport, _ := net.SplitHostPort(routes[i])
		conf := fmt.Sprintf(`server_name: n%d
host: %s
port: %s
jetstream { store_dir: %q }
cluster { name: passkeys, host: %s, port: %s, routes: [%s] }
ping_interval: "5s"
ping_max: 2
`, i+1, host, port, filepath.Join(dir, "js"), rhost, rport, strings.Join(rs, ", "))
		path := filepath.Join(dir, "node.conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, &clusterNode{name: fmt.Sprintf("n%d", i+1), bin: bin, conf: path,
			log: filepath.Join(dir, "node.log"), addr: clients[i]})
	}
	for _, n := range nodes {
		p, err := startServerProcess(t, n.bin, n.addr, n.log, "Listening for route connections", "-c", n.conf)
		if err != nil {
			return nodes, fmt.Errorf("%s: %w", n.name, err)
		}
		n.proc = p
	}
	return nodes, nil
}

func clusterURL(nodes []*clusterNode) string {
	var urls []string
	for _, n := range nodes {
		urls = append(urls, "nats://"+n.addr)
	}
	return strings.Join(urls, ",")
}

// start starts the node again, on its ports and store.
func (n *clusterNode) start(t *testing.T) {
	t.Helper()
	p, err := startServerProcess(t, n.bin, n.addr, n.log, "Listening for route connections", "-c", n.conf)
	if err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
	n.proc = p
}

// freeze stops the node's process (SIGSTOP) without closing anything, as
// a machine that hangs or drops off the network; the test's end wakes it
// (SIGCONT) before it is killed.
func (n *clusterNode) freeze(t *testing.T) {
	t.Helper()
	p := n.proc.cmd.Process
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Signal(syscall.SIGCONT) })
}

func (n *clusterNode) kill(t *testing.T) {
	t.Helper()
	n.proc.kill(t)
}

// served asks a worker's /partitions which partitions it serves; nil
// when it does not answer.
func served(addr string) []int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/partitions")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var st struct {
		Served []struct{ Partition int }
	}
	if json.NewDecoder(resp.Body).Decode(&st) != nil {
		return nil
	}
	out := []int{}
	for _, s := range st.Served {
		out = append(out, s.Partition)
	}
	return out
}

// allServed tells whether the workers at addrs serve every one of 8
// partitions, each by one of them, each worker about 8 / workers (the
// contract: rounded down or up).
func allServed(addrs []string) bool {
	seen := map[int]int{}
	for _, a := range addrs {
		ps := served(a)
		if len(ps) < 8/len(addrs) || len(ps) > (8+len(addrs)-1)/len(addrs) {
			return false
		}
		for _, p := range ps {
			seen[p]++
		}
	}
	if len(seen) != 8 {
		return false
	}
	for _, n := range seen {
		if n != 1 {
			return false
		}
	}
	return true
}

// Three workers on a three-node cluster with R3 streams, consumers and
// buckets. They start together with `worker provision` on a cluster that
// has not formed yet: every one of them waits for it and starts. Under a
// batch revocation (stream publishes with Reply-To and Nats-Msg-Id, many in
// flight) one worker is killed (SIGKILL), then the NATS node the requester
// is connected to is killed and restarted. Every command is applied exactly
// once, every user's sequence has no gap or repeat, every stream publish is
// answered (those whose replies went to the dead node when asked again
// with their Nats-Msg-Id), repeats are identical, and every user lists
// correctly through any worker.
func TestClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a three-node cluster and three worker processes")
	}
	const users, perUser = 300, 6
	nodes := startCluster(t)
	url := clusterURL(nodes)
	keys := testenv.NewKeys(t)
	bin := buildWorker(t)
	provisioned := make(chan error, 1)
	go func() {
		var out bytes.Buffer
		err := run(context.Background(), []string{"provision", "--nats-url", url, "--replicas", "3", "--lease-ttl", testLeaseTTL, "--ack-wait", testAckWait}, func(string) string { return "" },
			&out, &out)
		if err != nil {
			err = fmt.Errorf("%w; its output:\n%s", err, out.String())
		}
		provisioned <- err
	}()
	var procs []*process
	var httpAddrs, dataDirs []string
	for range 3 { // together, on a cluster still forming, each creating what it needs
		e := &env{url: url, keys: keys, dataDir: t.TempDir()}
		addr := testenv.FreeAddr(t)
		procs = append(procs, e.startProcess(t, bin, "--replicas", "3", "--http-listen", addr, "--snapshot-interval", "2s", "--log-level", "info"))
		httpAddrs, dataDirs = append(httpAddrs, addr), append(dataDirs, e.dataDir)
	}
	// The partitions spread over the three, each served by one.
	waitWithin(t, 90*time.Second, func() bool { return allServed(httpAddrs) })
	if err := <-provisioned; err != nil {
		t.Fatalf("worker provision on a cluster that was forming: %v", err)
	}
	for i, a := range httpAddrs {
		t.Logf("worker %d serves %v", i, served(a))
	}
	// The publisher on n1 (never killed); the requester on n2 (killed).
	pub, err := nats.Connect("nats://"+nodes[0].addr+",nats://"+nodes[2].addr, nats.DontRandomize(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	nc, err := nats.Connect("nats://"+nodes[1].addr+","+url, nats.DontRandomize(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(pub, jetstream.WithPublishAsyncMaxPending(256), jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	admin := testenv.Bearer(keys.Mint(t, testenv.Token{Subject: "admin", Org: "org1", Scopes: []string{"passkeys:admin"}}))
	storeCommand := storeUntilStored(t, js, admin)
	syncUsers(t, nc, storeCommand, users, perUser)

	removals := &replies{got: map[int][][]byte{}}
	inbox := collect(t, nc, removals)
	total := users * perUser
	msgID := func(k int) string { return passkey.ScopeMsgID(testenv.Issuer, "admin", "rm-"+strconv.Itoa(k)) }
	var failover time.Duration
	batch := &asyncBatch{js: js}
	for k := range total {
		batch.publish(removalCommand(t, k, users, admin, inbox, msgID(k)))
		switch k {
		case total / 3:
			waitCount(t, removals, total/6, 60*time.Second)
			failover = killAndProbe(t, procs[0], httpAddrs, nc, admin)
		case 2 * total / 3:
			nodes[1].kill(t)
			t.Logf("killed NATS node n2, the requester's, after %d replies", removals.count())
			nodes[1].start(t)
		}
	}
	if failover > 30*time.Second {
		t.Errorf("failover took %s, more than the contract's 30 s", failover)
	}
	unstored := batch.wait()
	for _, m := range unstored { // publishes whose acknowledgement was lost: again, the same Nats-Msg-Id
		storeCommand(m.Subject, m.Header.Get("Reply-To"), m.Header.Get(nats.MsgIdHdr), json.RawMessage(m.Data))
	}
	t.Logf("%d publishes were stored again after their acknowledgement was lost", len(unstored))

	// Every stream publish is answered; a reply that went to the dead
	// node is lost (core NATS is at most once), and asked again with its
	// Nats-Msg-Id it is the stored outcome.
	lost := unanswered(removals, js, total, time.Minute)
	t.Logf("%d of %d stream publishes got no reply once the partitions settled (their replies went to the dead node)", len(lost), total)
	askAgainForLost(t, nc, removals, users, total, admin, func(k int) string { return "rm-" + strconv.Itoa(k) })
	waitWithin(t, 90*time.Second, func() bool { return partitionsSettled(js) })

	// Every user lists correctly, through whichever worker answers.
	for u := range users {
		msg := nats.NewMsg("passkeys.list.user-" + strconv.Itoa(u))
		msg.Header.Set("Authorization", admin)
		reply, err := nc.RequestMsg(msg, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`"processedSequence":"%d"`, 1+perUser)
		if !strings.Contains(string(reply.Data), want) || !strings.Contains(string(reply.Data), `"id":"pk-`+strconv.Itoa(perUser)+`"`) ||
			strings.Count(string(reply.Data), `"id":`) != 1 {
			t.Fatalf("list user-%d: %s", u, reply.Data)
		}
	}
	// A repeat asked through whichever worker answers gets the first reply,
	// byte for byte, from the store of the partition's owner.
	for k := 0; k < total; k += total / 40 {
		msg := nats.NewMsg("passkeys.remove.user-" + strconv.Itoa(k%users))
		msg.Header.Set("Authorization", admin)
		msg.Header.Set(nats.MsgIdHdr, "rm-"+strconv.Itoa(k))
		msg.Data = encode(t, map[string]any{"tokenId": "pk-" + strconv.Itoa(k/users)})
		reply, err := nc.RequestMsg(msg, 15*time.Second)
		if err != nil {
			t.Fatalf("repeat of removal %d: %v", k, err)
		}
		removals.mu.Lock()
		first := removals.got[k][0]
		removals.mu.Unlock()
		if !bytes.Equal(reply.Data, first) {
			t.Fatalf("repeat of removal %d: %s, first reply %s", k, reply.Data, first)
		}
	}
	for _, p := range procs[1:] {
		p.stop(t)
	}
	verifyExactlyOnceIn(t, removals, users, perUser, 8, dataDirs)
}

// killAndProbe kills worker proc (SIGKILL) and times the first answer from
// the new owner of one of its partitions: a sync of a new user there,
// through the endpoint, asked again (the same Nats-Msg-Id) when no answer
// comes within 2 s, as a client does (a request that reached the dead
// worker's subscription before the server noticed is lost). It waits until
// the two others serve every partition.
func killAndProbe(t *testing.T, proc *process, httpAddrs []string, nc *nats.Conn, admin string) time.Duration {
	t.Helper()
	var probe string
	for owned, i := served(httpAddrs[0]), 0; probe == ""; i++ {
		if id := "probe-" + strconv.Itoa(i); slices.Contains(owned, partition.Of(id, 8)) {
			probe = id
		}
	}
	if err := proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	_ = proc.cmd.Wait()
	msg := nats.NewMsg("passkeys.sync." + probe)
	msg.Header.Set("Authorization", admin)
	msg.Header.Set(nats.MsgIdHdr, "probe")
	msg.Data = []byte(`{"resourceOwner":"org1","password":true}`)
	var reply *nats.Msg
	for err := error(nil); reply == nil; {
		if time.Since(killed) > 40*time.Second {
			t.Fatalf("the probe's sync after the kill: %v", err)
		}
		reply, err = nc.RequestMsg(msg, 2*time.Second)
	}
	failover := time.Since(killed)
	testenv.WantSuccess(t, reply)
	t.Logf("killed worker 0; first reply from the new owner of its partition %d after %s", partition.Of(probe, 8), failover.Round(time.Millisecond))
	waitWithin(t, 30*time.Second, func() bool { return allServed(httpAddrs[1:]) })
	return failover
}

// Two workers both act on one partition: the owner freezes (SIGSTOP, as a
// long pause would) with commands in hand, its lease expires, the other
// takes the partition over and serves it; then the first wakes up and
// finishes the batch it held before it notices the lease is gone. Nothing
// is applied twice, no later command overtakes an earlier one, and every
// reply, however often sent, is the same.
func TestPausedOwnerOverlaps(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	const users, perUser = 200, 6
	bin := buildWorker(t)
	ns := testenv.StartNATS(t)
	keys := testenv.NewKeys(t)
	nc := testenv.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(512))
	if err != nil {
		t.Fatal(err)
	}
	var procs []*process
	var addrs, dataDirs []string
	for range 2 {
		e := &env{url: ns.ClientURL(), keys: keys, dataDir: t.TempDir()}
		addr := testenv.FreeAddr(t)
		procs = append(procs, e.startProcess(t, bin, "--partitions", "1", "--http-listen", addr, "--snapshot-interval", "1s", "--log-level", "info"))
		addrs, dataDirs = append(addrs, addr), append(dataDirs, e.dataDir)
	}
	// The owner the assignment settles on, once both are members.
	var ids []string
	waitWithin(t, 30*time.Second, func() bool {
		ids = ids[:0]
		for _, d := range dataDirs {
			raw, err := os.ReadFile(filepath.Join(d, "worker-id"))
			if err != nil {
				return false
			}
			ids = append(ids, strings.TrimSpace(string(raw)))
		}
		return true
	})
	owner := 0
	if len(partition.OwnedAvoiding(ids[1], ids, 1, nil)) == 1 {
		owner = 1
	}
	other := 1 - owner
	waitWithin(t, 30*time.Second, func() bool { return len(served(addrs[owner])) == 1 && len(served(addrs[other])) == 0 })
	admin := testenv.Bearer(keys.Mint(t, testenv.Token{Subject: "admin", Org: "org1", Scopes: []string{"passkeys:admin"}}))
	syncUsers(t, nc, func(subject, replyTo, msgID string, body any) { publish(t, js, subject, admin, replyTo, msgID, body) }, users, perUser)

	removals := &replies{got: map[int][][]byte{}}
	inbox := collect(t, nc, removals)
	total := users * perUser
	for k := range total {
		publish(t, js, "passkeys.cmd.remove.user-"+strconv.Itoa(k%users), admin, inbox+"."+strconv.Itoa(k), "rm-"+strconv.Itoa(k),
			map[string]any{"tokenId": "pk-" + strconv.Itoa(k/users)})
		if k == total/3 {
			waitCount(t, removals, total/6, 60*time.Second)
			if err := procs[owner].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			t.Logf("froze the owner after %d replies", removals.count())
			waitWithin(t, 30*time.Second, func() bool { return len(served(addrs[other])) == 1 })
			t.Logf("the other worker serves the partition after %d replies", removals.count())
		}
		if k == 2*total/3 {
			if err := procs[owner].cmd.Process.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishes not acknowledged")
	}
	waitCount(t, removals, total, 90*time.Second)
	// The partition settles on one of them (the assignment gives it back to
	// the first, once it is a member again).
	waitWithin(t, 60*time.Second, func() bool { return len(served(addrs[owner]))+len(served(addrs[other])) == 1 })
	for _, p := range procs {
		p.stop(t)
	}
	logOwner := readFile(t, procs[owner].log.Name())
	if !strings.Contains(logOwner, "lease lost") {
		t.Errorf("the frozen owner never noticed it lost its lease")
	}
	verifyExactlyOnceIn(t, removals, users, perUser, 1, dataDirs)
}

// unanswered waits until every one of total commands has a reply, or
// until the partitions have settled (every command applied and
// acknowledged: the replies not here by then went to a dead or frozen
// node and are lost), at most within; it returns those without a reply.
func unanswered(r *replies, js jetstream.JetStream, total int, within time.Duration) []int {
	missing := func() []int {
		r.mu.Lock()
		defer r.mu.Unlock()
		var lost []int
		for k := range total {
			if len(r.got[k]) == 0 {
				lost = append(lost, k)
			}
		}
		return lost
	}
	lost := missing()
	for deadline := time.Now().Add(within); len(lost) > 0 && time.Now().Before(deadline); lost = missing() {
		if partitionsSettled(js) {
			return missing()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return lost
}

// removalCommand is the k-th removal of a batch over users: the user's
// passkey k/users, its reply to inbox.k, under msgID.
func removalCommand(t *testing.T, k, users int, admin, inbox, msgID string) *nats.Msg {
	msg := nats.NewMsg("passkeys.cmd.remove.user-" + strconv.Itoa(k%users))
	msg.Header.Set("Authorization", admin)
	msg.Header.Set("Reply-To", inbox+"."+strconv.Itoa(k))
	msg.Header.Set(nats.MsgIdHdr, msgID)
	msg.Data = encode(t, map[string]any{"tokenId": "pk-" + strconv.Itoa(k/users)})
	return msg
}

// asyncBatch publishes commands as a batch publisher does and keeps those
// whose acknowledgement was lost (a server died with it), to be stored
// again.
type asyncBatch struct {
	js       jetstream.JetStream
	mu       sync.Mutex
	unstored []*nats.Msg
	watching sync.WaitGroup // one per publish, until its acknowledgement or error
}

func (b *asyncBatch) publish(msg *nats.Msg) {
	f, err := b.js.PublishMsgAsync(msg)
	for err != nil { // the window is full: wait for acknowledgements
		<-b.js.PublishAsyncComplete()
		f, err = b.js.PublishMsgAsync(msg)
	}
	b.watching.Go(func() {
		select {
		case <-f.Ok():
		case <-f.Err():
			b.mu.Lock()
			b.unstored = append(b.unstored, f.Msg())
			b.mu.Unlock()
		}
	})
}

// wait waits for every publish's acknowledgement or error, and returns the
// publishes that got none.
func (b *asyncBatch) wait() []*nats.Msg {
	<-b.js.PublishAsyncComplete()
	b.watching.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.unstored
}
