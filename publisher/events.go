package publisher

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/topology"
)

// events prints the events of stream PASSKEYS_EVENTS, one CloudEvent JSON
// document a line: all of them, or from a time or a stream sequence on
// (--since), of one user (--user); with --follow it goes on printing new
// ones until interrupted.
func (p *Publisher) events(ctx context.Context, args []string) int {
	fs := p.Flags("events", "")
	c := ClientFlags(fs)
	follow := fs.Bool("follow", false, "go on printing events as they come, until interrupted")
	since := fs.String("since", "", "from this time (RFC 3339) or stream sequence on")
	user := fs.String("user", "", "only this user's events")
	if code, ok := p.Parse(fs, args, 0); !ok {
		return code
	}
	cfg, err := eventsFrom(*user, *since)
	if err != nil {
		return p.Fail(ExitUsage, "events: %v", err)
	}
	nc, err := p.Connect(c)
	if err != nil {
		return p.Fail(ExitFailed, "%v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return p.Fail(ExitFailed, "%v", err)
	}
	stream, err := js.Stream(ctx, topology.EventsStreamName)
	if err != nil {
		return p.Fail(ExitFailed, "events: stream %s: %v", topology.EventsStreamName, err)
	}
	cons, err := stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return p.Fail(ExitFailed, "events: %v", err)
	}
	if *follow {
		err = p.followEvents(ctx, cons)
	} else {
		err = p.printEvents(cons)
	}
	if err != nil {
		return p.Fail(ExitFailed, "events: %v", err)
	}
	return ExitOK
}

// eventsFrom is the ordered consumer of one user's events (all users' with
// user empty) from since: an RFC 3339 time, a stream sequence, or the
// beginning when empty.
func eventsFrom(user, since string) (jetstream.OrderedConsumerConfig, error) {
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if user != "" {
		cfg.FilterSubjects = []string{topology.EventsPrefix + "." + user}
	}
	switch seq, err := strconv.ParseUint(since, 10, 64); {
	case since == "":
	case err == nil && seq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq
	default:
		at, err := time.Parse(time.RFC3339Nano, since)
		if err != nil {
			return cfg, fmt.Errorf("--since %q is neither an RFC 3339 time nor a stream sequence", since)
		}
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &at
	}
	return cfg, nil
}

// followEvents prints the events as they come, until ctx ends.
func (p *Publisher) followEvents(ctx context.Context, cons jetstream.Consumer) error {
	iter, err := cons.Messages()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, iter.Stop)
	defer stop()
	for {
		m, err := iter.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(p.Stdout, "%s\n", m.Data())
	}
}

// printEvents prints what the stream holds now, then returns.
func (p *Publisher) printEvents(cons jetstream.Consumer) error {
	for {
		batch, err := cons.FetchNoWait(256)
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			fmt.Fprintf(p.Stdout, "%s\n", m.Data())
			n++
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
	}
}
