// Command notify is an example consumer of the passkeys removal events: it
// tells a person "a passkey was removed from your account" (here it prints
// the message it would send). It reads stream PASSKEYS_EVENTS through a
// durable consumer, acknowledges an event only after handling it, and
// remembers the ids it has handled in a file, so that an event delivered
// again (after a crash, a redelivery, or the worker publishing it twice)
// is not handled twice.
//
//	go run ./examples/notify --nats-url nats://127.0.0.1:4222 --state notify.state
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// removal is what this consumer reads of an event.
type removal struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	Subject string `json:"subject"`
	Data    struct {
		Name  string                `json:"name"`
		Actor struct{ Role string } `json:"actor"`
	} `json:"data"`
}

func main() {
	url := flag.String("nats-url", nats.DefaultURL, "NATS server URL")
	state := flag.String("state", "notify.state", "file of the event ids already handled")
	durable := flag.String("durable", "notify", "the durable consumer's name")
	ackWait := flag.Duration("ack-wait", 30*time.Second, "how soon an event handed out and not acknowledged (a crash) comes again")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *url, *state, *durable, *ackWait); err != nil {
		fmt.Fprintln(os.Stderr, "notify:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, url, statePath, durable string, ackWait time.Duration) error {
	handled, state, err := openState(statePath)
	if err != nil {
		return err
	}
	defer state.Close()
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "PASSKEYS_EVENTS", jetstream.ConsumerConfig{
		Durable: durable, AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, FilterSubject: "passkeys.events.>",
	})
	if err != nil {
		return err
	}
	msgs, err := cons.Messages()
	if err != nil {
		return err
	}
	defer context.AfterFunc(ctx, msgs.Stop)()
	for {
		m, err := msgs.Next()
		if err != nil {
			return nil // stopped
		}
		var ev removal
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			_ = m.Term() // not an event this consumer can read; never will be
			continue
		}
		if !handled[ev.ID] {
			if ev.Type == "user.human.passwordless.token.removed" {
				fmt.Printf("to %s: the passkey %q was removed from your account (by %s)\n", ev.Subject, ev.Data.Name, ev.Data.Actor.Role)
			}
			// Remembered on disk before the ack: a crash after this line
			// redelivers the event, and it is skipped.
			if _, err := fmt.Fprintln(state, ev.ID); err != nil {
				return err
			}
			if err := state.Sync(); err != nil {
				return err
			}
			handled[ev.ID] = true
		}
		if err := m.DoubleAck(ctx); err != nil {
			return err
		}
	}
}

// openState reads the ids handled so far and opens the file to add more.
func openState(path string) (map[string]bool, *os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	handled := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		handled[sc.Text()] = true
	}
	if err := sc.Err(); err != nil {
		f.Close()
		return nil, nil, err
	}
	return handled, f, nil
}
