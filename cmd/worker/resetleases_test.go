package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/partition"
)

// An operator resets the lease bucket under two serving workers, as the
// way out of a bucket NATS left without a leader (docs/reliability.md), with
// nats.conf's users: the provisioner may delete it, the workers see each
// other again in the new, empty bucket and split the partitions between
// them as before (a watch that went on from the old bucket's sequence would
// see no member, and each would take what it could), and every user is
// served from where it was.
func TestResetLeases(t *testing.T) {
	t.Parallel()
	ns := testenv.StartNATSWithUsers(t, "../../nats.conf")
	operator := connectAs(t, ns, "passkeys-admin", testenv.Passwords["passkeys-admin"])
	provisioner := connectAs(t, ns, "passkeys-provisioner", testenv.Passwords["passkeys-provisioner"])
	workerUser := connectAs(t, ns, "passkeys-worker", testenv.Passwords["passkeys-worker"])
	keys := testenv.NewKeys(t)
	provision(t, ns.ClientURL(), keys.JWKSPath)
	ids := []string{"reset-a", "reset-b"}
	var e *env
	for _, id := range ids {
		e = &env{url: testenv.UserURL(ns.ClientURL(), "passkeys-worker"), keys: keys, dataDir: t.TempDir(), nc: operator.nc}
		if err := os.WriteFile(filepath.Join(e.dataDir, "worker-id"), []byte(id+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		e.w = e.startWorker(t, "--create-stream=false")
	}
	adminTok := e.token(t, "a", admin)
	const users = 8
	for u := range users {
		testenv.WantSuccess(t, e.request(t, fmt.Sprintf("passkeys.sync.u%d", u), adminTok, syncBody(true, "pk-1", "pk-2")))
	}
	split := splitAsAssigned(t, workerUser.nc, ids)
	waitWithin(t, 30*time.Second, split)

	js, err := jetstream.New(provisioner.nc)
	if err != nil {
		t.Fatal(err)
	}
	created := func() time.Time {
		t.Helper()
		st, err := js.Stream(context.Background(), "KV_PASSKEYS_LEASES")
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().Created
	}
	before := created()
	// Flags that are not what the streams were provisioned with delete
	// nothing: a reset done in a hurry must not leave no bucket at all.
	var out bytes.Buffer
	err = run(context.Background(), []string{"provision", "--nats-url", testenv.UserURL(ns.ClientURL(), "passkeys-provisioner"),
		"--reset-leases", "--partitions", "4"}, func(string) string { return "" }, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "nothing deleted") || !created().Equal(before) {
		t.Fatalf("reset with --partitions 4 on 8 partitions: %v\n%s", err, out.String())
	}
	// An old bucket, far along: the new one's sequences stay below its last
	// one for the rest of the test.
	for i := range 3000 {
		if err := workerUser.nc.Publish("$KV.PASSKEYS_LEASES.filler", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := workerUser.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	provision(t, ns.ClientURL(), keys.JWKSPath, "--reset-leases")
	if after := created(); !after.After(before) {
		t.Fatalf("the lease bucket was not made again: created %v, before %v", after, before)
	}
	waitWithin(t, 30*time.Second, split)
	for u := range users {
		subject := fmt.Sprintf("passkeys.remove.u%d", u)
		var reply *nats.Msg
		waitWithin(t, 30*time.Second, func() bool {
			reply = e.request(t, subject, e.token(t, fmt.Sprintf("u%d", u)), `{"tokenId":"pk-1"}`, "Nats-Msg-Id", fmt.Sprintf("reset-%d", u))
			return reply.Header.Get("Nats-Service-Error-Code") == ""
		})
		if got := testenv.WantSuccess(t, reply); got.Details.Sequence != "2" {
			t.Errorf("u%d's removal after the reset: sequence %s, want 2 (its sync was 1)", u, got.Details.Sequence)
		}
	}
}

// splitAsAssigned tells, read as the workers' user, whether every
// partition's lease is held by the worker the assignment over both ids
// gives it to: as it is once each worker sees the other.
func splitAsAssigned(t *testing.T, nc *nats.Conn, ids []string) func() bool {
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		kv, err := js.KeyValue(ctx, "PASSKEYS_LEASES")
		if err != nil {
			return false
		}
		for _, id := range ids {
			for _, p := range partition.OwnedAvoiding(id, ids, partition.DefaultCount, nil) {
				e, err := kv.Get(ctx, fmt.Sprintf("partitions.%d", p))
				if err != nil || !strings.HasPrefix(string(e.Value()), id+"/") {
					return false
				}
			}
		}
		return true
	}
}
