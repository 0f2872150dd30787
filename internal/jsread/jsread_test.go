package jsread_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/testenv"
)

// A stream of 600 messages over three subjects, each with a header of its
// own, read back by subject with leader gets and with direct gets.
func TestReader(t *testing.T) {
	ns := testenv.StartNATS(t)
	nc := testenv.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, direct := range []bool{false, true} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			name := "S" + strconv.FormatBool(direct)
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, AllowDirect: direct}); err != nil {
				t.Fatal(err)
			}
			for i := range 600 {
				msg := nats.NewMsg(fmt.Sprintf("%s.%d.x", name, i%3))
				msg.Header.Set("K", strconv.Itoa(i))
				msg.Data = []byte(strconv.Itoa(i))
				if _, err := js.PublishMsg(ctx, msg); err != nil {
					t.Fatal(err)
				}
			}
			r := jsread.New(js, name, direct)
			last, err := r.Last(ctx, name+".1.>")
			if err != nil || string(last.Data) != "598" || last.Sequence != 599 {
				t.Fatalf("Last: %v %v", last, err)
			}
			if _, err := r.Last(ctx, name+".9.>"); !errors.Is(err, jetstream.ErrMsgNotFound) {
				t.Fatalf("Last of nothing: %v", err)
			}
			m, err := r.Get(ctx, 10)
			if err != nil || string(m.Data) != "9" || m.Header.Get("K") != "9" || m.Subject != name+".0.x" {
				t.Fatalf("Get 10: %+v %v", m, err)
			}
			var got []int
			for from := uint64(3); ; {
				msgs, err := r.Read(ctx, name+".1.>", from, last.Sequence, 70)
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range msgs {
					i, _ := strconv.Atoi(string(m.Data))
					if m.Header.Get("K") != string(m.Data) || len(m.Header) != 1 || m.Time.IsZero() {
						t.Fatalf("message %d: headers %v, time %v", i, m.Header, m.Time)
					}
					got = append(got, i)
				}
				if len(msgs) < 70 {
					break
				}
				from = msgs[len(msgs)-1].Sequence + 1
			}
			if len(got) != 199 || got[0] != 4 || got[198] != 598 {
				t.Fatalf("Range read %d messages, %v...%v", len(got), got[:1], got[len(got)-1:])
			}
			for i := 1; i < len(got); i++ {
				if got[i] != got[i-1]+3 {
					t.Fatalf("Range skipped from %d to %d", got[i-1], got[i])
				}
			}
			// A range whose end the stream does not hold yet waits for it.
			rctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			if _, err := r.Read(rctx, name+".1.>", 590, 700, 100); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("a range past the stream's end: %v", err)
			}
		})
	}
}

// A request the server takes and never answers (a frozen server's) is
// sent again after a bounded wait, not waited on until the caller's own
// deadline: the read succeeds on the next attempt.
func TestUnansweredRequestIsSentAgain(t *testing.T) {
	nc := testenv.Connect(t, testenv.StartNATS(t).ClientURL())
	js, err := jetstream.NewWithAPIPrefix(nc, "standin") // no JetStream answers there
	if err != nil {
		t.Fatal(err)
	}
	// A stand-in for the stream's leader: the first request is swallowed.
	var asked atomic.Int64
	sub, err := nc.Subscribe("standin.STREAM.MSG.GET.S", func(m *nats.Msg) {
		if asked.Add(1) == 1 {
			return
		}
		_ = m.Respond([]byte(`{"message":{"subject":"a","seq":5,"data":"eA==","time":"2026-12-08T00:00:00Z"}}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := jsread.New(js, "S", false).Get(ctx, 5)
	if err != nil {
		t.Fatalf("get after an unanswered request: %v", err)
	}
	if n := asked.Load(); m.Sequence != 5 || string(m.Data) != "x" || n != 2 {
		t.Errorf("got seq %d data %q after %d requests, want 5, \"x\", 2", m.Sequence, m.Data, n)
	}
}
