package topology

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/partition"
)

// Handles are what a worker uses of the topology.
type Handles struct {
	Stream jetstream.Stream
	Leases jetstream.KeyValue
	// LeaseTTL is the lease bucket's TTL as the bucket says: what a worker
	// derives how long it holds a lease from (ownership.Config.TTL), never
	// a constant of its own build.
	LeaseTTL  time.Duration
	Snapshots jetstream.ObjectStore
}

// startRetry is how start-up tries again what a forming or busy JetStream
// refuses for now: no meta leader yet, not enough peers for the replicas,
// a timeout, another worker creating the same stream at the same moment.
var startRetry = retry.Policy{First: 250 * time.Millisecond, Factor: 2, Max: 2 * time.Second}

// Provision creates or updates everything (Describe), as `worker
// provision` does for an operator and a worker with --create-stream does at
// start-up, trying again until ctx ends whatever may be transient. A stream
// from before partitions is upgraded in place: it keeps its commands, and
// records where they end (MetaLegacyUntil) for the migration of the old
// store. A stream split into another number of partitions is refused at
// once.
func Provision(ctx context.Context, js jetstream.JetStream, s Settings, log zerolog.Logger) (Handles, error) {
	return untilDone(ctx, log, "create or update the streams, consumers and buckets", func(ctx context.Context) (Handles, error) {
		return provisionOnce(ctx, js, s)
	})
}

// Find looks up what `worker provision` made, for a worker whose NATS user
// may not create anything, trying again (until ctx ends) what may be
// transient. What is not there at all, and a stream split into another
// number of partitions, are refused at once: `worker provision` comes
// first.
func Find(ctx context.Context, js jetstream.JetStream, s Settings, log zerolog.Logger) (Handles, error) {
	return untilDone(ctx, log, "find the streams and buckets `worker provision` made", func(ctx context.Context) (Handles, error) {
		return findOnce(ctx, js, s)
	})
}

// untilDone runs op until it succeeds, fails for good (retry.Permanent), or
// ctx ends; each failure is logged. op bounds each of its calls (call).
func untilDone(ctx context.Context, log zerolog.Logger, what string, op func(context.Context) (Handles, error)) (Handles, error) {
	attempt := 0
	h, err := retry.Do(ctx, startRetry, func() (Handles, error) {
		attempt++
		return op(ctx)
	}, func(err error, next time.Duration) {
		log.Warn().Err(err).Int("attempt", attempt).Dur("retry_in", next).Msgf("could not %s yet; trying again", what)
	})
	if err != nil && ctx.Err() != nil {
		return h, fmt.Errorf("%s: stopped while waiting (last error: %w)", what, err)
	}
	return h, err
}

// callTimeout bounds one JetStream API call of Provision or Find. Two
// workers creating the same stream at the same moment on a cluster can both
// be left without an answer (nats-io/nats-server#3677 and its kin), though
// the stream is made: the call is given up on and made again after a pause
// of random length (so that the workers that collided do not collide on
// the next resource too), and the next try finds it there.
const callTimeout = 2 * time.Second

// callTries bounds the tries of one call before the whole provisioning is
// tried again.
const callTries = 4

// call runs one API call with its own deadline, again when it got no
// answer.
func call[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	for try := 1; ; try++ {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		v, err := f(cctx)
		cancel()
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || try == callTries || ctx.Err() != nil {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(time.Duration(100+rand.IntN(500)) * time.Millisecond):
		}
	}
}

// leaseBucket creates the lease bucket as lc says, or updates the one that
// exists, keeping its TTL: the running workers hold their leases by it. A
// bucket made by another provisioner after this one looked is kept as it
// is (created, not updated: its TTL is not overwritten).
func leaseBucket(ctx context.Context, js jetstream.JetStream, lc jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	old, err := call(ctx, func(ctx context.Context) (jetstream.KeyValue, error) { return js.KeyValue(ctx, LeaseBucket) })
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		kv, err := call(ctx, func(ctx context.Context) (jetstream.KeyValue, error) { return js.CreateKeyValue(ctx, lc) })
		if !errors.Is(err, jetstream.ErrBucketExists) {
			return kv, err
		}
		return call(ctx, func(ctx context.Context) (jetstream.KeyValue, error) { return js.KeyValue(ctx, LeaseBucket) })
	case err != nil:
		return nil, err
	}
	if lc.TTL, err = bucketTTL(ctx, old); err != nil {
		return nil, err
	}
	return call(ctx, func(ctx context.Context) (jetstream.KeyValue, error) { return js.CreateOrUpdateKeyValue(ctx, lc) })
}

func provisionOnce(ctx context.Context, js jetstream.JetStream, s Settings) (Handles, error) {
	var h Handles
	sc, err := s.streamConfigOver(ctx, js)
	if err != nil {
		return h, err
	}
	if h.Stream, err = ensureStream(ctx, js, sc); err != nil {
		return h, err
	}
	if _, err := ensureStream(ctx, js, s.EventsStreamConfig()); err != nil {
		return h, err
	}
	for p := range s.Partitions {
		cc := s.PartitionConsumerConfig(p)
		_, err := call(ctx, func(ctx context.Context) (jetstream.Consumer, error) {
			return js.CreateOrUpdateConsumer(ctx, StreamName, cc)
		})
		if err != nil {
			return h, fmt.Errorf("create or update consumer %s: %w", cc.Durable, err)
		}
	}
	if h.Leases, err = leaseBucket(ctx, js, s.LeaseBucketConfig()); err != nil {
		return h, fmt.Errorf("key-value bucket %s: %w", LeaseBucket, err)
	}
	if h.LeaseTTL, err = bucketTTL(ctx, h.Leases); err != nil {
		return h, err
	}
	h.Snapshots, err = call(ctx, func(ctx context.Context) (jetstream.ObjectStore, error) {
		return js.CreateOrUpdateObjectStore(ctx, s.SnapshotBucketConfig())
	})
	if err != nil {
		return h, fmt.Errorf("object store %s: %w", SnapshotBucket, err)
	}
	return h, nil
}

// streamConfigOver is stream PASSKEYS' configuration as it will be over
// the stream as it is: a stream of the version before partitions keeps
// its last sequence of that time in its metadata (the upgrade's), and a
// stream split into another count of partitions is refused.
func (s Settings) streamConfigOver(ctx context.Context, js jetstream.JetStream) (jetstream.StreamConfig, error) {
	sc := s.StreamConfig()
	existing, err := call(ctx, func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, StreamName) })
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return sc, nil
	case err != nil:
		return sc, fmt.Errorf("stream %s: %w", StreamName, err)
	}
	old := existing.CachedInfo()
	got, err := StreamPartitions(old.Config)
	if err != nil {
		return sc, retry.Permanent(err)
	}
	switch {
	case got == 0:
		// Before partitions: its commands so far stay where they are,
		// under their old subjects, for the upgrade.
		if old.State.LastSeq > 0 {
			sc.Metadata[MetaLegacyUntil] = strconv.FormatUint(old.State.LastSeq, 10)
		}
	case got != s.Partitions:
		return sc, retry.Permanent(CheckPartitions(old.Config, s.Partitions))
	default:
		for _, k := range []string{MetaLegacyUntil, MetaKeysCarried} {
			if v, ok := old.Config.Metadata[k]; ok {
				sc.Metadata[k] = v
			}
		}
	}
	return sc, nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	st, err := call(ctx, func(ctx context.Context) (jetstream.Stream, error) { return js.CreateOrUpdateStream(ctx, cfg) })
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s: %w", cfg.Name, err)
	}
	return st, nil
}

func findOnce(ctx context.Context, js jetstream.JetStream, s Settings) (Handles, error) {
	var h Handles
	var err error
	missing := func(what string, err error) error {
		err = fmt.Errorf("%s: %w (run `worker provision` first)", what, err)
		if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) {
			return retry.Permanent(err)
		}
		return err
	}
	if h.Stream, err = call(ctx, func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, StreamName) }); err != nil {
		return h, missing("stream "+StreamName, err)
	}
	if err := CheckPartitions(h.Stream.CachedInfo().Config, s.Partitions); err != nil {
		return h, retry.Permanent(err)
	}
	if h.Leases, err = call(ctx, func(ctx context.Context) (jetstream.KeyValue, error) { return js.KeyValue(ctx, LeaseBucket) }); err != nil {
		return h, missing("key-value bucket "+LeaseBucket, err)
	}
	if h.LeaseTTL, err = bucketTTL(ctx, h.Leases); err != nil {
		return h, err
	}
	if h.Snapshots, err = call(ctx, func(ctx context.Context) (jetstream.ObjectStore, error) { return js.ObjectStore(ctx, SnapshotBucket) }); err != nil {
		return h, missing("object store "+SnapshotBucket, err)
	}
	if c := h.Stream.CachedInfo().Config; !c.AllowMsgTTL || !slices.Contains(c.Subjects, partition.ControlSubjects) {
		return h, retry.Permanent(fmt.Errorf("stream %s does not hold the partitions' control entries (%s) yet: "+
			"run `worker provision` with this version", StreamName, partition.ControlSubjects))
	}
	return h, nil
}

// bucketTTL is the TTL the lease bucket kv says it has.
func bucketTTL(ctx context.Context, kv jetstream.KeyValue) (time.Duration, error) {
	st, err := call(ctx, func(ctx context.Context) (jetstream.KeyValueStatus, error) { return kv.Status(ctx) })
	if err != nil {
		return 0, fmt.Errorf("key-value bucket %s: %w", LeaseBucket, err)
	}
	if st.TTL() <= 0 {
		return 0, retry.Permanent(fmt.Errorf("key-value bucket %s has no TTL: a lease in it would never expire; "+
			"delete it (`worker provision --reset-leases`)", LeaseBucket))
	}
	return st.TTL(), nil
}

// ResetLeases deletes the lease bucket's stream, for `worker provision
// --reset-leases`: the way out of a bucket that NATS left without a leader
// (nats-server issue 5205; docs/reliability.md), which no worker can hold a
// partition through. It then waits out the lease TTL and a second: no
// lease can be renewed while the bucket is gone, so every worker's hold
// has ended (by its own clock) before Provision creates the bucket again,
// empty, and a new lease can be taken. A bucket left without a leader cannot
// say its TTL: the wait is then MaxLeaseTTL, the longest this build makes
// one with (a bucket made by hand or by another build with a longer one
// needs its workers stopped first). Leases are seconds of state; the
// partitions' state is in their stores, snapshots and the stream.
func ResetLeases(ctx context.Context, js jetstream.JetStream, s Settings, log zerolog.Logger) error {
	name := "KV_" + LeaseBucket
	if err := s.matchesStream(ctx, js); err != nil {
		return fmt.Errorf("nothing deleted: %w", err)
	}
	ttl := MaxLeaseTTL
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if st, err := js.Stream(ictx, name); err == nil && st.CachedInfo().Config.MaxAge > 0 {
		ttl = st.CachedInfo().Config.MaxAge
	}
	cancel()
	err := untilDeleted(ctx, js, name, log)
	if err != nil {
		return fmt.Errorf("delete stream %s: %w", name, err)
	}
	log.Warn().Str("stream", name).Dur("wait", ttl+time.Second).
		Msg("lease bucket deleted; waiting out the lease TTL before creating it again, so that no worker still holds a lease from it")
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(ttl + time.Second):
		return nil
	}
}

// matchesStream tells whether s is what stream PASSKEYS was provisioned
// with (its partitions and replicas), so that a reset, done in a hurry,
// does not delete the bucket and then fail to provision, or provision
// every stream with other replicas.
func (s Settings) matchesStream(ctx context.Context, js jetstream.JetStream) error {
	st, err := call(ctx, func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, StreamName) })
	if err != nil {
		return fmt.Errorf("stream %s: %w", StreamName, err)
	}
	cfg := st.CachedInfo().Config
	if err := CheckPartitions(cfg, s.Partitions); err != nil {
		return err
	}
	if cfg.Replicas != s.Replicas {
		return fmt.Errorf("stream %s has %d replicas, and --replicas says %d: give the flags it was provisioned with", StreamName, cfg.Replicas, s.Replicas)
	}
	return nil
}

// untilDeleted deletes stream name, trying again what may be transient;
// a stream that is not there is deleted already.
func untilDeleted(ctx context.Context, js jetstream.JetStream, name string, log zerolog.Logger) error {
	_, err := untilDone(ctx, log, "delete stream "+name, func(ctx context.Context) (Handles, error) {
		_, err := call(ctx, func(ctx context.Context) (struct{}, error) { return struct{}{}, js.DeleteStream(ctx, name) })
		if err == nil || errors.Is(err, jetstream.ErrStreamNotFound) {
			return Handles{}, nil
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code != 503 {
			return Handles{}, retry.Permanent(err)
		}
		return Handles{}, err
	})
	return err
}
