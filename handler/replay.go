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
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/partition"
)

// Replay runs the stored commands in r on subjects filter (one
// partition's; "" for all) through a, read from stream PASSKEYS through an
// ordered consumer from r.FromSeq on (command.Replay says what is done with
// them): passkeys.admin.replay.
func Replay(ctx context.Context, js jetstream.JetStream, a *command.Applier, filter string, r command.ReplayRange, maxBatch int,
	log zerolog.Logger, progress func(command.ReplayReport, uint64)) (command.ReplayReport, error) {
	if r.FromSeq == 0 || r.ToSeq < r.FromSeq {
		return command.ReplayReport{FromSeq: r.FromSeq, ToSeq: r.ToSeq}, nil
	}
	stream, err := js.Stream(ctx, StreamName)
	if err != nil {
		return command.ReplayReport{}, fmt.Errorf("replay: %w", err)
	}
	occ := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: r.FromSeq}
	if filter != "" {
		occ.FilterSubjects = []string{filter}
	}
	oc, err := stream.OrderedConsumer(ctx, occ)
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
		_, subject, err := partition.Original(msg.Subject())
		if err != nil {
			return nil, err
		}
		return &command.Command{Subject: subject, Header: command.Header(msg.Headers()), Body: msg.Data(),
			StreamSeq: meta.Sequence.Stream, Timestamp: meta.Timestamp}, nil
	}
}

// CatchUp applies the partition's stored commands (filter) that follow
// applied, in stream order, up to the last one the stream holds when it
// gets there: what a worker does when it takes a partition over (from its
// own older store, or a snapshot), before it consumes. Nobody is replied to:
// the commands still unacknowledged come back through the consumer and get
// their stored outcomes. A fault of this machine makes it wait and try
// again (policy wait), never skip. The report's ToSeq is the last sequence
// applied.
func CatchUp(ctx context.Context, stream jetstream.Stream, a *command.Applier, filter string, applied uint64,
	maxBatch int, wait retry.Policy, log zerolog.Logger) (command.ReplayReport, error) {
	rep := command.ReplayReport{FromSeq: applied + 1, ToSeq: applied}
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	first, err := stream.GetMsg(gctx, applied+1, jetstream.WithGetMsgSubject(filter))
	cancel()
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return rep, nil
	}
	if err != nil {
		return rep, fmt.Errorf("catch-up: %w", err)
	}
	oc, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy, OptStartSeq: first.Sequence,
	})
	if err != nil {
		return rep, fmt.Errorf("catch-up: %w", err)
	}
	iter, err := oc.Messages()
	if err != nil {
		return rep, fmt.Errorf("catch-up: %w", err)
	}
	defer iter.Stop()
	for done := false; !done; {
		var cmds []*command.Command
		for len(cmds) < maxBatch && !done {
			msg, err := iter.Next()
			if err != nil {
				return rep, fmt.Errorf("catch-up: %w", err)
			}
			meta, err := msg.Metadata()
			if err != nil {
				return rep, fmt.Errorf("catch-up: %w", err)
			}
			_, subject, err := partition.Original(msg.Subject())
			if err != nil {
				return rep, fmt.Errorf("catch-up: %w", err)
			}
			cmds = append(cmds, &command.Command{Subject: subject, Header: command.Header(msg.Headers()), Body: msg.Data(),
				StreamSeq: meta.Sequence.Stream, Timestamp: meta.Timestamp})
			done = meta.NumPending == 0
		}
		ok := commitInOrder(ctx, a, a.Check(cmds), wait, log, nil, func(i int, _ command.Result) {
			rep.Read++
			rep.ToSeq = cmds[i].StreamSeq
		}, nil)
		if !ok {
			return rep, ctx.Err()
		}
	}
	return rep, nil
}
