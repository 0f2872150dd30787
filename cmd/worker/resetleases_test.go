package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/testenv"
)

// An operator resets the lease bucket under a serving worker, as the way
// out of a bucket NATS left without a leader (docs/reliability.md), with
// nats.conf's users: the provisioner may delete it, the worker takes its
// partitions again from the new, empty bucket, and every user is served
// from where it was.
func TestResetLeases(t *testing.T) {
	ns := testenv.StartNATSWithUsers(t, "../../nats.conf")
	operator := connectAs(t, ns, "passkeys-admin", testenv.Passwords["passkeys-admin"])
	provisioner := connectAs(t, ns, "passkeys-provisioner", testenv.Passwords["passkeys-provisioner"])
	e := &env{url: testenv.UserURL(ns.ClientURL(), "passkeys-worker"), keys: testenv.NewKeys(t), dataDir: t.TempDir(), nc: operator.nc}
	provision(t, ns.ClientURL(), e.keys.JWKSPath)
	e.w = e.startWorker(t, "--create-stream=false")
	adminTok := e.token(t, "a", admin)
	const users = 8
	for u := range users {
		testenv.WantSuccess(t, e.request(t, fmt.Sprintf("passkeys.sync.u%d", u), adminTok, syncBody(true, "pk-1", "pk-2")))
	}
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

	provision(t, ns.ClientURL(), e.keys.JWKSPath, "--reset-leases")
	if after := created(); !after.After(before) {
		t.Fatalf("the lease bucket was not made again: created %v, before %v", after, before)
	}
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
	select {
	case <-e.w.done:
		t.Fatalf("the worker stopped: %v", e.w.err)
	default:
	}
}
