package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/topology"
	"github.com/passkeys/worker/trust"
)

// flakyStream fails its first reads of a control entry, as a busy cluster
// may.
type flakyStream struct {
	jetstream.Stream
	fails int
}

func (f *flakyStream) GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error) {
	if f.fails > 0 {
		f.fails--
		return nil, context.DeadlineExceeded
	}
	return f.Stream.GetLastMsgForSubject(ctx, subject)
}

// The old key history is carried into the partitions' first control
// entries once: not when partition 0's entries cannot be read (the
// provision fails instead of writing a first entry without it), and never
// again after a purge of the stream, which would bring its retired set
// back.
func TestOldKeyHistoryCarriedOnce(t *testing.T) {
	ctx := context.Background()
	js, err := jetstream.New(testenv.Connect(t, testenv.StartNATS(t).ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	keys := testenv.NewKeys(t)
	old, _ := trust.NewEntry(keys.PublicSet("EdDSA"), testenv.Issuer, testenv.Audience, auth.RuleRFC8032)
	raw, _ := json.Marshal(old)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: topology.KeyStream, Subjects: []string{topology.KeyPrefix + ".>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, topology.KeyPrefix+".set.00000001", raw); err != nil {
		t.Fatal(err)
	}
	h, err := topology.Provision(ctx, js, testenv.Settings(2), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	next, _ := trust.NewEntry(keys.PublicSet("ES256"), testenv.Issuer, testenv.Audience, auth.RuleRFC8032)
	if err := provisionKeys(ctx, js, &flakyStream{Stream: h.Stream, fails: 1}, 2, next, io.Discard, zerolog.Nop()); err == nil {
		t.Fatal("a provision that could not read partition 0's entries succeeded")
	}
	if _, err := h.Stream.GetLastMsgForSubject(ctx, partition.ControlSubject(0)); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("the failed provision wrote a first entry: %v", err)
	}
	var out bytes.Buffer
	if err := provisionKeys(ctx, js, h.Stream, 2, next, &out, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	first, err := h.Stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(partition.ControlSubject(0)))
	if err != nil {
		t.Fatal(err)
	}
	if e, err := trust.Parse(first.Data); err != nil || len(e.Before) != 1 || !e.Same(old) {
		t.Fatalf("partition 0's first entry: %v, %s; want the old history's set with its era", err, first.Data)
	}
	if err := h.Stream.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	fresh, err := js.Stream(ctx, topology.StreamName) // as a new provisioner reads it
	if err != nil {
		t.Fatal(err)
	}
	if err := provisionKeys(ctx, js, fresh, 2, nil, &out, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	for p := range 2 {
		if m, err := h.Stream.GetLastMsgForSubject(ctx, partition.ControlSubject(p)); !errors.Is(err, jetstream.ErrMsgNotFound) {
			t.Fatalf("after a purge, partition %d got an entry again: %v %v\n%s", p, m, err, &out)
		}
	}
}
