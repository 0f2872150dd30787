package handler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/command"
)

// Replay runs the stored commands in r through a, read from stream PASSKEYS
// through an ordered consumer from r.FromSeq on (command.Replay says what
// is done with them). It is the operator's passkeys.admin.replay and the
// catch-up after a restore.
func Replay(ctx context.Context, js jetstream.JetStream, a *command.Applier, r command.ReplayRange, maxBatch int,
	log zerolog.Logger, progress func(command.ReplayReport, uint64)) (command.ReplayReport, error) {
	if r.FromSeq == 0 || r.ToSeq < r.FromSeq {
		return command.ReplayReport{FromSeq: r.FromSeq, ToSeq: r.ToSeq}, nil
	}
	stream, err := js.Stream(ctx, StreamName)
	if err != nil {
		return command.ReplayReport{}, fmt.Errorf("replay: %w", err)
	}
	oc, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: r.FromSeq,
	})
	if err != nil {
		return command.ReplayReport{}, fmt.Errorf("replay: %w", err)
	}
	iter, err := oc.Messages()
	if err != nil {
		return command.ReplayReport{}, fmt.Errorf("replay: %w", err)
	}
	defer iter.Stop()
	return command.Replay(ctx, a, streamSource(iter), r, maxBatch, log, progress)
}

// streamSource yields the commands an ordered consumer reads; io.EOF when
// the stream has had nothing more for a while (the range's end is not in it).
func streamSource(iter jetstream.MessagesContext) command.Source {
	return func(context.Context) (*command.Command, error) {
		msg, err := iter.Next(jetstream.NextMaxWait(5 * time.Second))
		if errors.Is(err, nats.ErrTimeout) {
			return nil, io.EOF
		}
		if err != nil {
			return nil, err
		}
		meta, err := msg.Metadata()
		if err != nil {
			return nil, err
		}
		return &command.Command{Subject: msg.Subject(), Header: command.Header(msg.Headers()), Body: msg.Data(),
			StreamSeq: meta.Sequence.Stream, Timestamp: meta.Timestamp}, nil
	}
}
