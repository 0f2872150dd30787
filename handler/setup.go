package handler

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/partition"
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
// commit, and short enough that the commands a crashed worker held come
// back soon to the partition's next owner. There is no BackOff and no nak:
// a partition waits on a fault (retry.Wait), in place.
const (
	DefaultAckWait       = 10 * time.Second
	DefaultMaxAckPending = 20000
)

// Stream metadata the worker keeps with stream PASSKEYS.
const (
	// MetaPartitions is the partition count, fixed when the stream was
	// partitioned.
	MetaPartitions = "passkeys.partitions"
	// MetaLegacyUntil is set on a stream that held commands before it was
	// partitioned: the last stream sequence of that time. A partition's
	// state must have applied the stream at least that far (migrated from
	// the store of the version before) before it may serve.
	MetaLegacyUntil = "passkeys.legacy-until"
)

// StreamConfig is the PASSKEYS stream, split into partitions: it captures
// passkeys.cmd.<op>.<userId> and stores each command under
// passkeys.part.<partition>.<op>.<userId> (partition.Transform). MaxAge
// equals the outcome retention: a command stays replayable only as long as
// its outcome is kept, so a replay can never apply a command whose outcome
// was pruned a second time.
func StreamConfig(retention, duplicates time.Duration, partitions, replicas int) jetstream.StreamConfig {
	src, dst := partition.Transform(partitions)
	return jetstream.StreamConfig{
		Name:             StreamName,
		Description:      "Passkey removal and sync commands",
		Subjects:         []string{src},
		SubjectTransform: &jetstream.SubjectTransformConfig{Source: src, Destination: dst},
		Storage:          jetstream.FileStorage,
		Retention:        jetstream.LimitsPolicy,
		MaxAge:           retention,
		Duplicates:       duplicates,
		MaxMsgSize:       1 << 20,
		Discard:          jetstream.DiscardOld,
		Replicas:         replicas,
		Metadata:         map[string]string{MetaPartitions: strconv.Itoa(partitions)},
	}
}

// StreamPartitions reads the partition count a stream was created with:
// 0 for a stream from before partitions.
func StreamPartitions(cfg jetstream.StreamConfig) (int, error) {
	v, ok := cfg.Metadata[MetaPartitions]
	if !ok {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || partition.ValidateCount(n) != nil {
		return 0, fmt.Errorf("stream %s has a bad %s %q", cfg.Name, MetaPartitions, v)
	}
	return n, nil
}

// LegacyUntil reads MetaLegacyUntil: 0 when the stream was partitioned
// from its start.
func LegacyUntil(cfg jetstream.StreamConfig) uint64 {
	n, _ := strconv.ParseUint(cfg.Metadata[MetaLegacyUntil], 10, 64)
	return n
}

// DeadLetterStreamConfig is PASSKEYS_DLQ: one message per command that was
// terminated after its last delivery, kept until an operator removes it.
func DeadLetterStreamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        DeadLetterStreamName,
		Description: "Passkey commands that kept failing and were terminated",
		Subjects:    []string{DeadLetterPrefix + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Duplicates:  time.Hour,
		Replicas:    replicas,
	}
}

// PriorityGroup is the priority group every worker pulls partition
// consumers with; PinnedTTL is how long the server keeps a partition pinned
// to a worker that stopped pulling (its default is 2 minutes).
const (
	PriorityGroup = "passkeys"
	PinnedTTL     = 5 * time.Second
)

// PartitionConsumerName is the durable consumer of partition p.
func PartitionConsumerName(p int) string { return ConsumerName + "-" + partition.Name(p) }

// PartitionConsumerConfig is partition p's durable pull consumer: its
// stored commands only, pinned to one worker at a time (the delivery guard;
// correctness does not depend on it). MaxDeliver is unlimited: a command is
// never given up on; the partition waits until it is applied.
func PartitionConsumerConfig(p, maxAckPending, replicas int, ackWait time.Duration) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        PartitionConsumerName(p),
		Description:    "passkeys worker, partition " + strconv.Itoa(p),
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        ackWait,
		MaxDeliver:     -1,
		MaxAckPending:  maxAckPending,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		FilterSubject:  partition.Filter(p),
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{PriorityGroup},
		PinnedTTL:      PinnedTTL,
		Replicas:       replicas,
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
