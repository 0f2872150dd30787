package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/passkey"
)

// A NATS node that freezes (SIGSTOP: a hung machine, or one cut off the
// network, that closes nothing) under a batch revocation, with the
// requester connected to it. The other servers route replies to it until
// their pings give up, nobody says "no responders", and the requester
// notices only by its own pings. Replies routed to the frozen node are
// lost (core NATS is at most once, and the worker does not send them
// again): the requester asks again with each unanswered command's
// Nats-Msg-Id, as the client and the publisher's resume do, and gets the
// stored outcome. Every command is applied once, and the worker goes on.
func TestFrozenNATSNode(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a three-node cluster and a worker process")
	}
	const users, perUser = 100, 3
	nodes := startCluster(t)
	url := clusterURL(nodes)
	e := &env{url: url, keys: testenv.NewKeys(t), dataDir: t.TempDir()}
	addr := testenv.FreeAddr(t)
	e.startProcess(t, buildWorker(t), "--replicas", "3", "--http-listen", addr, "--log-level", "info")
	waitWithin(t, 90*time.Second, func() bool { return len(served(addr)) == 8 })

	// The publisher on n1 (never frozen); the requester on n2, noticing a
	// silent server within about 3 s (its own pings), and moving on.
	pub, err := nats.Connect("nats://"+nodes[0].addr+",nats://"+nodes[2].addr, nats.DontRandomize(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	nc, err := nats.Connect("nats://"+nodes[1].addr+","+url, nats.DontRandomize(), nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond), nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(pub, jetstream.WithPublishAsyncMaxPending(64), jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	admin := testenv.Bearer(e.keys.Mint(t, testenv.Token{Subject: "admin", Org: "org1", Scopes: []string{"passkeys:admin"}}))
	storeCommand := storeUntilStored(t, js, admin)
	syncUsers(t, nc, storeCommand, users, perUser)

	removals := &replies{got: map[int][][]byte{}}
	inbox := collect(t, nc, removals)
	total := users * perUser
	batch := &asyncBatch{js: js}
	for k := range total {
		batch.publish(removalCommand(t, k, users, admin, inbox, passkey.ScopeMsgID(testenv.Issuer, "admin", "rm-"+strconv.Itoa(k))))
		if k == total/3 {
			waitCount(t, removals, total/6, 60*time.Second)
			nodes[1].freeze(t)
			t.Logf("froze NATS node n2, the requester's, after %d replies", removals.count())
		}
		time.Sleep(10 * time.Millisecond) // a steady batch over a few seconds, across the freeze
	}
	unstored := batch.wait()
	for _, m := range unstored { // publishes whose acknowledgement was lost: again, the same Nats-Msg-Id
		storeCommand(m.Subject, m.Header.Get("Reply-To"), m.Header.Get(nats.MsgIdHdr), json.RawMessage(m.Data))
	}
	t.Logf("%d publishes were stored again after their acknowledgement was lost", len(unstored))
	lost := unanswered(removals, js, total, time.Minute)
	t.Logf("%d of %d stream publishes got no reply once the partitions settled (their replies went to the frozen node)", len(lost), total)
	askAgainForLost(t, nc, removals, users, total, admin, func(k int) string { return "rm-" + strconv.Itoa(k) })
	removals.mu.Lock()
	defer removals.mu.Unlock()
	for k := range total {
		if got := removals.got[k]; len(got) == 0 || strings.Contains(string(got[0]), `"code"`) {
			t.Fatalf("removal %d: %q, want its success", k, got)
		}
	}
}
