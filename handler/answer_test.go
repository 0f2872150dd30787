package handler

import (
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/passkey"
)

// A takeover owes answers to the last NumAckPending commands above the
// consumer's ack floor and at or below its last delivery, those with a
// Reply-To, and to no other; however many the catch-up applies.
func TestEarlyAnswersOwesTheLastUnacknowledged(t *testing.T) {
	nc := testenv.Connect(t, testenv.StartNATS(t).ClientURL())
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox + ".*")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                    string
		floor, delivered, count uint64
		pending                 int
		noReplyTo               []uint64
		want                    []uint64
	}{
		{name: "the last of the range", floor: 2, delivered: 8, count: 10, pending: 3, want: []uint64{6, 7, 8}},
		{name: "fewer in the range than pending", floor: 7, delivered: 9, count: 10, pending: 5, want: []uint64{8, 9}},
		{name: "without a Reply-To", floor: 0, delivered: 5, count: 10, pending: 3, noReplyTo: []uint64{4}, want: []uint64{3, 5}},
		{name: "a long catch-up", floor: 1000, delivered: 5000, count: 9000, pending: 2, want: []uint64{4999, 5000}},
		{name: "nothing pending", floor: 0, delivered: 8, count: 10, pending: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := &jetstream.ConsumerInfo{NumAckPending: tc.pending,
				AckFloor: jetstream.SequenceInfo{Stream: tc.floor}, Delivered: jetstream.SequenceInfo{Stream: tc.delivered}}
			e := NewEarlyAnswers(info)
			for seq := uint64(1); seq <= tc.count; seq++ {
				to := inbox + "." + strconv.FormatUint(seq, 10)
				if slices.Contains(tc.noReplyTo, seq) {
					to = ""
				}
				e.Note(&command.Command{Subject: "passkeys.cmd.remove.u1", StreamSeq: seq},
					command.Result{ReplyTo: to, Answer: passkey.Answer{Err: passkey.ErrPasskeyNotFound}})
			}
			counted := 0
			sent := e.Send(nc, func() error { return nil }, func() { counted++ }, zerolog.Nop())
			if counted != sent {
				t.Errorf("sent %d, counted %d", sent, counted)
			}
			if err := nc.Publish(inbox+".end", nil); err != nil { // after every answer: one connection keeps the order
				t.Fatal(err)
			}
			var got []uint64
			for {
				m, err := sub.NextMsg(10 * time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if m.Subject == inbox+".end" {
					break
				}
				seq, _ := strconv.ParseUint(m.Subject[len(inbox)+1:], 10, 64)
				got = append(got, seq)
			}
			if !slices.Equal(got, tc.want) || sent != len(tc.want) {
				t.Errorf("answered %v (reported %d), want %v", got, sent, tc.want)
			}
		})
	}
}

// A worker that lost the partition while it answers (it paused) stops.
func TestEarlyAnswersStopWhenThePartitionIsLost(t *testing.T) {
	nc := testenv.Connect(t, testenv.StartNATS(t).ClientURL())
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox + ".*")
	if err != nil {
		t.Fatal(err)
	}
	e := NewEarlyAnswers(&jetstream.ConsumerInfo{NumAckPending: 5, Delivered: jetstream.SequenceInfo{Stream: 5}})
	for seq := uint64(1); seq <= 5; seq++ {
		e.Note(&command.Command{Subject: "passkeys.cmd.remove.u1", StreamSeq: seq},
			command.Result{ReplyTo: inbox + ".x", Answer: passkey.Answer{Err: passkey.ErrPasskeyNotFound}})
	}
	checks := 0
	held := func() error {
		if checks++; checks > 2 {
			return errors.New("the lease is gone")
		}
		return nil
	}
	if sent := e.Send(nc, held, nil, zerolog.Nop()); sent != 2 {
		t.Errorf("sent %d after the partition was lost at the third, want 2", sent)
	}
	if err := nc.Publish(inbox+".end", nil); err != nil {
		t.Fatal(err)
	}
	for n := 0; ; n++ {
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject == inbox+".end" {
			if n != 2 {
				t.Errorf("%d answers went out, want 2", n)
			}
			return
		}
	}
}
