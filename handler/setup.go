package handler

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/command"
)

// Names of the contract's stream and durable consumer, and of the stream
// where commands that kept failing are recorded for operators.
const (
	StreamName           = "PASSKEYS"
	ConsumerName         = "passkeys-worker"
	DeadLetterStreamName = "PASSKEYS_DLQ"
	DeadLetterPrefix     = "passkeys.dlq"
)

// Consumer settings. The ack wait is far longer than a batch takes to
// commit (milliseconds, a second with the store's retries), and short
// enough that the commands a crashed worker held come back soon after it
// restarts. There is no BackOff: the server offsets a nak's delay by it
// (a nak of 2 s came back after 2 s - AckWait + BackOff[n], 22 s), so the
// one retry schedule is the worker's nak delay (retry.Redelivery).
const (
	DefaultMaxDeliver    = 5
	DefaultAckWait       = 10 * time.Second
	DefaultMaxAckPending = 20000
)

// StreamConfig is the PASSKEYS stream. MaxAge equals the outcome retention:
// a command stays replayable only as long as its outcome is kept, so a replay
// can never apply a command whose outcome was pruned a second time.
func StreamConfig(retention, duplicates time.Duration) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "Passkey removal and sync commands",
		Subjects:    []string{command.Prefix + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      retention,
		Duplicates:  duplicates,
		MaxMsgSize:  1 << 20,
		Discard:     jetstream.DiscardOld,
	}
}

// DeadLetterStreamConfig is PASSKEYS_DLQ: one message per command that was
// terminated after its last delivery, kept until an operator removes it.
func DeadLetterStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        DeadLetterStreamName,
		Description: "Passkey commands that kept failing and were terminated",
		Subjects:    []string{DeadLetterPrefix + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Duplicates:  time.Hour,
	}
}

// ConsumerConfig is the durable pull consumer the worker reads.
func ConsumerConfig(maxDeliver, maxAckPending int, ackWait time.Duration) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "passkeys worker",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    maxDeliver,
		MaxAckPending: maxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: command.Prefix + ".>",
	}
}

// EnsureStream creates the stream or updates it to cfg.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// EnsureConsumer creates the durable consumer or updates it to cfg.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, StreamName, cfg)
	if err != nil {
		return nil, fmt.Errorf("create or update consumer %s: %w", cfg.Durable, err)
	}
	return c, nil
}
