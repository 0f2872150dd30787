package service

import (
	"github.com/passkeys/worker/auth"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
)

// A forwarding endpoint that cannot store the command answers UNAVAILABLE at once.
func TestForwardUnavailable(t *testing.T) {
	ns := testenv.StartNATS(t) // no PASSKEYS stream: JetStream has nowhere to store
	nc := testenv.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	keys := testenv.NewKeys(t)
	ks := keys.KeySet(t)
	svc, err := (&Endpoints{JS: js, Conn: nc, Router: OneStore{testenv.MustOpenStore(t)}, Verifier: keys.Verifier(t), Keys: func() *auth.KeySet { return ks }, Log: zerolog.Nop(), OutcomeWait: time.Second}).Start(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	msg := nats.NewMsg("passkeys.remove.u1")
	msg.Header.Set(command.HeaderAuthorization, testenv.Bearer(keys.Mint(t, testenv.Token{Subject: "u1"})))
	msg.Data = []byte(`{"tokenId":"pk-1"}`)
	reply, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WantError(t, reply, 14, passkey.IDStreamUnavailable, "503")
}

// OneStore is the Router of one store that holds every user.
type OneStore struct{ Store *storage.Store }

// Local returns the store.
func (o OneStore) Local(string) (PartitionStore, int, bool) {
	return PartitionStore{Store: o.Store, Valid: func() bool { return true }}, 0, true
}
