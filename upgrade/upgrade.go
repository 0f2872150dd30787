// Package upgrade upgrades the data directory of the version before
// partitions: its one store is split into the partitions' stores, the
// commands the stream holds under the old subjects that the old store had
// not applied are applied, and each partition's snapshot is written.
package upgrade

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/runner"
	"github.com/passkeys/worker/snapshot"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
	"github.com/passkeys/worker/trust"
)

// Config is what an upgrade needs.
type Config struct {
	DataDir      string
	Partitions   int
	Retention    time.Duration
	StoreTimeout time.Duration
	// DeleteConsumer: the old single consumer is deleted afterwards (a
	// worker that provisions; an operator's worker user may not).
	DeleteConsumer bool

	JS        jetstream.JetStream
	Stream    jetstream.Stream
	Reader    *jsread.Reader
	Verifier  *auth.Verifier
	Snapshots *snapshot.Store
	Log       zerolog.Logger
}

// Run upgrades cfg.DataDir when it holds the store of the version before
// partitions (runner.LegacyStoreFile), and does nothing otherwise. The old
// file is kept beside as LegacyStoreFile.migrated. A crash midway leaves
// the old store in place, and the next start upgrades again from it.
func Run(ctx context.Context, cfg Config) error {
	oldPath := filepath.Join(cfg.DataDir, runner.LegacyStoreFile)
	if _, err := os.Stat(oldPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	old, err := storage.Open(oldPath, storage.Options{Timeout: cfg.StoreTimeout})
	if err != nil {
		return err
	}
	defer old.Close()
	u := &upgrade{cfg: cfg, stores: make([]*storage.Store, cfg.Partitions)}
	defer u.discard()
	until, tail, err := u.split(ctx, old)
	if err != nil {
		return err
	}
	if err := u.install(until); err != nil {
		return err
	}
	if err := u.snapshots(ctx, until); err != nil {
		return err
	}
	if err := old.Close(); err != nil {
		return err
	}
	if err := os.Rename(oldPath, oldPath+".migrated"); err != nil {
		return err
	}
	if err := storage.SyncDir(cfg.DataDir); err != nil {
		return err
	}
	if cfg.DeleteConsumer {
		// Its subjects are no longer stored, and `worker provision` does
		// not need it.
		_ = cfg.JS.DeleteConsumer(ctx, topology.StreamName, topology.ConsumerName)
	}
	cfg.Log.Warn().Int("tail_applied", tail).Uint64("applied_seq", until).Str("kept", oldPath+".migrated").
		Msg("upgrade done: the store is split into partitions")
	return nil
}

// upgrade is one upgrade under way: the partitions' new stores, open under
// temporary names until installed.
type upgrade struct {
	cfg    Config
	stores []*storage.Store
}

func (u *upgrade) tmp(p int) string { return runner.StorePath(u.cfg.DataDir, p) + ".migrating" }

// discard closes and removes the stores not installed.
func (u *upgrade) discard() {
	for p, s := range u.stores {
		if s != nil {
			s.Close()
			os.Remove(u.tmp(p))
		}
	}
}

// split copies the old store into the partitions' new stores and applies
// the stream's commands the old store had not; it returns the sequence the
// new stores have applied, and how many commands it applied.
func (u *upgrade) split(ctx context.Context, old *storage.Store) (uint64, int, error) {
	applied, err := old.AppliedSeq()
	if err != nil {
		return 0, 0, err
	}
	// Commands below the old store's applied sequence may still be
	// unapplied (a nak'd command waits for its redelivery), so the old
	// consumer's acknowledged floor says where to start. Those applied
	// already are repeats: every command's outcome is kept.
	from := applied + 1
	if c, err := u.cfg.JS.Consumer(ctx, topology.StreamName, topology.ConsumerName); err == nil {
		from = min(from, c.CachedInfo().AckFloor.Stream+1)
	}
	u.cfg.Log.Warn().Str("store", runner.LegacyStoreFile).Uint64("applied_seq", applied).Uint64("from_seq", from).Int("partitions", u.cfg.Partitions).
		Msg("upgrading the store of the version before partitions: splitting it into the partitions' stores")
	if err := os.MkdirAll(filepath.Join(u.cfg.DataDir, runner.Dir), 0o700); err != nil {
		return 0, 0, err
	}
	for p := range u.stores {
		os.Remove(u.tmp(p))
		if u.stores[p], err = storage.Open(u.tmp(p), storage.Options{Timeout: time.Second}); err != nil {
			return 0, 0, err
		}
	}
	partOf := func(user string) int { return partition.Of(user, u.cfg.Partitions) }
	if err := storage.Split(old, u.stores, partOf, from-1); err != nil {
		return 0, 0, err
	}
	last, n, err := u.applyTail(ctx, from)
	if err != nil {
		return 0, 0, err
	}
	return max(last, topology.LegacyUntil(u.cfg.Stream.CachedInfo().Config), applied), n, nil
}

// applyTail applies the commands the stream holds under the old subjects
// (passkeys.cmd...) from sequence from on, each into its user's partition
// store, waiting out faults as a partition does. It returns the last
// sequence read and how many there were.
func (u *upgrade) applyTail(ctx context.Context, from uint64) (uint64, int, error) {
	appliers := make([]*command.Applier, len(u.stores))
	for p, s := range u.stores {
		// The commands are judged by the partition's first key set's
		// eras (the old key history's), as the version before did.
		if err := trust.AwaitEntries(ctx, s, u.cfg.Reader, p, nil, u.cfg.Log); err != nil {
			return 0, 0, err
		}
		appliers[p] = &command.Applier{Store: s, Verifier: u.cfg.Verifier, Retention: u.cfg.Retention, Log: u.cfg.Log}
	}
	filter := partition.CommandPrefix + ".>"
	n := 0
	var last uint64
	for seq := from; ; {
		// One at a time: the tail is what the old worker had not applied
		// when it stopped, a handful.
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		m, err := u.cfg.Reader.Next(gctx, seq, filter)
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return last, n, nil
		}
		if err != nil {
			return 0, 0, fmt.Errorf("upgrade: %w", err)
		}
		// Stored as published, before the stream was partitioned.
		cmd := &command.Command{Subject: m.Subject, Header: command.Header(m.Header), Body: m.Data, StreamSeq: m.Sequence, Timestamp: m.Time}
		_, user, _ := passkey.ParseSubject(partition.CommandPrefix, cmd.Subject)
		a := appliers[partition.Of(user, len(u.stores))]
		if err := a.ApplyInOrder(ctx, []*command.Command{cmd}, command.InOrder{Wait: retry.Wait}); err != nil {
			return 0, 0, fmt.Errorf("upgrade: apply stream sequence %d: %w", m.Sequence, err)
		}
		n++
		last, seq = m.Sequence, m.Sequence+1
	}
}

// install gives every new store the applied sequence until and the
// stream it follows, and moves it to its partition's place.
func (u *upgrade) install(until uint64) error {
	for p, s := range u.stores {
		stream := runner.StreamID(u.cfg.Stream.CachedInfo())
		err := s.Update(func(tx *storage.Tx) error {
			if err := tx.SetStream(stream); err != nil {
				return err
			}
			return tx.SetAppliedSeq(until)
		})
		if err != nil {
			return err
		}
		if err := s.Close(); err != nil {
			return err
		}
		u.stores[p] = nil
		if err := os.Rename(u.tmp(p), runner.StorePath(u.cfg.DataDir, p)); err != nil {
			return err
		}
	}
	return storage.SyncDir(filepath.Join(u.cfg.DataDir, runner.Dir))
}

// snapshots writes every partition's snapshot, so that the other workers
// can take the partitions this one will not serve. Before this worker
// joins, with no lease: the upgrade is the operator's; and snapshots never
// go backwards in any case.
func (u *upgrade) snapshots(ctx context.Context, until uint64) error {
	for p := range u.cfg.Partitions {
		if _, err := u.cfg.Snapshots.Save(ctx, p, runner.StorePath(u.cfg.DataDir, p), until, func() error { return nil }); err != nil {
			return fmt.Errorf("upgrade: snapshot of %s: %w", partition.Name(p), err)
		}
	}
	return nil
}
