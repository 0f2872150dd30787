// Package topology names everything the workers use in JetStream (the
// streams, the partitions' durable consumers, the buckets), holds their
// settings, and creates them (Provision, for an operator or the embedded
// default) or finds them (Find, for a worker whose NATS user may not
// create anything). Nothing else in the tree spells a stream's or a
// bucket's name or settings.
package topology

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/partition"
)

// The command stream and its consumers.
const (
	StreamName = "PASSKEYS"
	// ConsumerName is the durable consumer of the version before
	// partitions; partition p's is PartitionConsumerName(p).
	ConsumerName = "passkeys-worker"
	// PriorityGroup is the group every worker pulls partition consumers
	// with; PinnedTTL how long the server keeps a partition pinned to a
	// worker that stopped pulling (its default is 2 minutes).
	PriorityGroup = "passkeys"
	PinnedTTL     = 5 * time.Second
	// DefaultAckWait is far longer than a batch takes to commit, and short
	// enough that the commands a crashed worker held come back soon to the
	// partition's next owner. There is no BackOff: a partition waits on a
	// fault in place.
	DefaultAckWait       = 10 * time.Second
	DefaultMaxAckPending = 20000
	// MinAckWait is the shortest Settings.AckWait: well over a batch's
	// commit, and over the margin a stopping worker keeps when it hands
	// its commands back (handler's giveBack).
	MinAckWait = 4 * time.Second
)

// Metadata the workers keep with stream PASSKEYS.
const (
	// MetaPartitions is the partition count, fixed when the stream was
	// partitioned.
	MetaPartitions = "passkeys.partitions"
	// MetaLegacyUntil is set on a stream that held commands before it was
	// partitioned: the last stream sequence of that time. A partition's
	// state must have applied the stream at least that far (migrated from
	// the store of the version before) before it may serve.
	MetaLegacyUntil = "passkeys.legacy-until"
	// MetaKeysCarried is set once the key history of the versions before
	// control entries (KeyStream) was carried into the partitions' first
	// entries: it is never read again (after a purge, it would bring a
	// retired set back).
	MetaKeysCarried = "passkeys.keys-carried"
)

// The other streams.
const (
	// EventsStreamName holds one CloudEvent per applied change.
	EventsStreamName = "PASSKEYS_EVENTS"
	// SnapshotStream is the stream behind object store SnapshotBucket.
	SnapshotStream = "OBJ_" + SnapshotBucket
	EventsPrefix   = "passkeys.events"
)

// The buckets the workers coordinate through.
const (
	// LeaseBucket holds membership (members.<worker id>) and partition
	// leases (partitions.<n>); a key not renewed for the bucket's TTL
	// expires. LeaseTTL is the TTL a new bucket is made with unless
	// Settings.LeaseTTL says another (MinLeaseTTL to MaxLeaseTTL); one that
	// exists keeps its own (Handles.LeaseTTL), which workers read.
	LeaseBucket = "PASSKEYS_LEASES"
	LeaseTTL    = 6 * time.Second
	MinLeaseTTL = 3 * time.Second
	MaxLeaseTTL = 30 * time.Second
	// SnapshotBucket holds the partitions' snapshots.
	SnapshotBucket = "PASSKEYS_SNAPSHOTS"
	// KeyStream held the key history of the versions before control
	// entries (package trust): an append-only stream on subjects
	// KeyPrefix.<key>. Only `worker provision` reads it, once, to carry it
	// into the partitions' first control entries.
	KeyStream = "KV_PASSKEYS_JWKS"
	KeyPrefix = "$KV.PASSKEYS_JWKS"
)

// Settings are what an operator chooses: retentions, windows, partitions
// and replicas.
type Settings struct {
	// Retention is the outcome retention, and so the command stream's
	// MaxAge; DuplicateWindow its Nats-Msg-Id window.
	Retention, DuplicateWindow time.Duration
	// EventsRetention and EventsDuplicates are PASSKEYS_EVENTS' MaxAge
	// and duplicate window.
	EventsRetention, EventsDuplicates time.Duration
	Partitions, Replicas              int
	// LeaseTTL is the TTL of a lease bucket made now (0: LeaseTTL).
	LeaseTTL time.Duration
	// AckWait is the partition consumers' ack wait (0: DefaultAckWait).
	AckWait time.Duration
}

// Validate checks the settings.
func (s Settings) Validate() error {
	switch {
	case s.Retention <= 0:
		return fmt.Errorf("--outcome-retention must be positive")
	case s.DuplicateWindow <= 0 || s.DuplicateWindow > s.Retention:
		return fmt.Errorf("--duplicate-window must be positive and at most the outcome retention")
	case s.EventsRetention <= 0 || s.EventsDuplicates <= 0 || s.EventsDuplicates > s.EventsRetention:
		return fmt.Errorf("--events-retention and --events-dedup-window must be positive, the window at most the retention")
	case s.LeaseTTL != 0 && (s.LeaseTTL < MinLeaseTTL || s.LeaseTTL > MaxLeaseTTL):
		return fmt.Errorf("--lease-ttl must be between %v and %v", MinLeaseTTL, MaxLeaseTTL)
	case s.AckWait != 0 && s.AckWait < MinAckWait:
		return fmt.Errorf("--ack-wait must be at least %v", MinAckWait)
	case s.Replicas < 1 || s.Replicas > 5:
		return fmt.Errorf("--replicas must be between 1 and 5, not %d", s.Replicas)
	}
	return partition.ValidateCount(s.Partitions)
}

// StreamConfig is PASSKEYS, split into partitions: it captures
// passkeys.cmd.<op>.<userId> and stores each command under
// passkeys.part.<partition>.<op>.<userId> (partition.Transform). MaxAge
// equals the outcome retention: a command stays replayable only as long as
// its outcome is kept, so a replay can never apply a command whose outcome
// was pruned a second time. Direct gets are allowed: a worker reads a
// partition's commands with them (catch-up, replay), since its NATS user
// may not create a consumer on the stream. It also captures the
// partitions' control entries (partition.ControlSubjects), which only the
// provisioner may publish.
func (s Settings) StreamConfig() jetstream.StreamConfig {
	src, dst := partition.Transform(s.Partitions)
	return jetstream.StreamConfig{
		Name:             StreamName,
		Description:      "Passkey removal and sync commands",
		Subjects:         []string{src, partition.ControlSubjects},
		SubjectTransform: &jetstream.SubjectTransformConfig{Source: src, Destination: dst},
		// The control entries carry Nats-TTL: never, and MaxAge passes
		// them by: a key set stays in force as long as no other follows.
		AllowMsgTTL: true,
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      s.Retention,
		Duplicates:  s.DuplicateWindow,
		MaxMsgSize:  1 << 20,
		Discard:     jetstream.DiscardOld,
		Replicas:    s.Replicas,
		AllowDirect: true,
		Metadata:    map[string]string{MetaPartitions: strconv.Itoa(s.Partitions)},
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

// CheckPartitions refuses a stream split into another number of partitions
// than want.
func CheckPartitions(cfg jetstream.StreamConfig, want int) error {
	got, err := StreamPartitions(cfg)
	if err != nil {
		return err
	}
	switch {
	case got == 0:
		return fmt.Errorf("stream %s is not split into partitions yet: run `worker provision` (or a worker with --create-stream) to upgrade it", StreamName)
	case got != want:
		return fmt.Errorf("stream %s is split into %d partitions, but this worker was started with --partitions %d: "+
			"the count is fixed when the stream is created; start every worker with --partitions %d", StreamName, got, want, got)
	}
	return nil
}

// PartitionConsumerName is the durable consumer of partition p.
func PartitionConsumerName(p int) string { return ConsumerName + "-" + partition.Name(p) }

// PartitionConsumerConfig is partition p's durable pull consumer: its
// stored commands only, pinned to one worker at a time (a delivery guard;
// correctness does not depend on it). MaxDeliver is unlimited: a command is
// never given up on; the partition waits until it is applied.
func (s Settings) PartitionConsumerConfig(p int) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        PartitionConsumerName(p),
		Description:    "passkeys worker, partition " + strconv.Itoa(p),
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        cmp.Or(s.AckWait, DefaultAckWait),
		MaxDeliver:     -1,
		MaxAckPending:  DefaultMaxAckPending,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		FilterSubject:  partition.Filter(p),
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{PriorityGroup},
		PinnedTTL:      PinnedTTL,
		Replicas:       s.Replicas,
	}
}

// EventsStreamConfig is PASSKEYS_EVENTS: one CloudEvent per applied change
// on passkeys.events.<userId>, kept for EventsRetention. Its duplicate
// window is how late a second publication of an event is still dropped.
func (s Settings) EventsStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        EventsStreamName,
		Description: "Passkey removal and sync events (CloudEvents 1.0, JSON)",
		Subjects:    []string{EventsPrefix + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      s.EventsRetention,
		Duplicates:  s.EventsDuplicates,
		Discard:     jetstream.DiscardOld,
		Replicas:    s.Replicas,
	}
}

// LeaseBucketConfig is PASSKEYS_LEASES.
func (s Settings) LeaseBucketConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: LeaseBucket, Description: "passkeys workers: membership and partition leases",
		TTL: cmp.Or(s.LeaseTTL, LeaseTTL), History: 1, Storage: jetstream.FileStorage, Replicas: s.Replicas,
	}
}

// SnapshotBucketConfig is PASSKEYS_SNAPSHOTS.
func (s Settings) SnapshotBucketConfig() jetstream.ObjectStoreConfig {
	return jetstream.ObjectStoreConfig{
		Bucket: SnapshotBucket, Description: "passkeys workers: the newest snapshots of each partition's state",
		Storage: jetstream.FileStorage, Replicas: s.Replicas,
	}
}

// Describe says what Provision creates or updates, for help texts and
// the provisioner's report.
func (s Settings) Describe() string {
	return strings.Join([]string{
		fmt.Sprintf("stream %s (%d partitions, R%d)", StreamName, s.Partitions, s.Replicas),
		fmt.Sprintf("%d durable consumers %s-p000...", s.Partitions, ConsumerName),
		"stream " + EventsStreamName,
		"key-value bucket " + LeaseBucket, "object store " + SnapshotBucket,
	}, ", ")
}
