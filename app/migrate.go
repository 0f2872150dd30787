package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/retry"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
)

// WorkerIDFile holds the worker's member id in its data directory, so a
// restarted worker is the same member and takes its partitions back (with
// their local state) when they are still free.
const WorkerIDFile = "worker-id"

// workerID reads the data directory's worker id, or makes one: the host
// name and random hex.
func workerID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, WorkerIDFile)
	raw, err := os.ReadFile(path)
	if err == nil {
		if id := strings.TrimSpace(string(raw)); validMemberID(id) {
			return id, nil
		}
		return "", fmt.Errorf("%s holds no valid worker id; delete it to have a new one made", path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, host)
	if len(host) > 32 {
		host = host[:32]
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := strings.Trim(host+"-"+hex.EncodeToString(b[:]), "-")
	if err := storage.WriteFileAtomic(path, func(w io.Writer) error { _, err := io.WriteString(w, id+"\n"); return err }); err != nil {
		return "", err
	}
	return id, nil
}

// validMemberID accepts what can be a key token of the lease bucket.
func validMemberID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// migrateLegacy upgrades the data directory of the version before
// partitions: its one store (StoreFile) is split into the partitions'
// stores, the commands the stream holds under the old subjects that the old
// store had not applied are applied, each partition's snapshot is written,
// and the old file is kept beside as StoreFile.migrated. Nothing happens
// without an old store. A crash midway leaves the old store in place, and
// the next start migrates again from it.
func (w *worker) migrateLegacy(ctx context.Context) error {
	oldPath := filepath.Join(w.cfg.DataDir, StoreFile)
	if _, err := os.Stat(oldPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	n, log := w.cfg.Partitions, w.log
	storePath := func(p int) string { return filepath.Join(w.cfg.DataDir, PartitionsDir, partition.Name(p)+".db") }
	old, err := storage.Open(oldPath, storage.Options{Timeout: w.cfg.StoreTimeout})
	if err != nil {
		return err
	}
	defer old.Close()
	var applied uint64
	if err := old.View(func(tx *storage.Tx) error { applied = tx.AppliedSeq(); return nil }); err != nil {
		return err
	}
	// Commands below the old store's applied sequence may still be
	// unapplied (a nak'd command waits for its redelivery), so the old
	// consumer's acknowledged floor says where to start. Those applied
	// already are repeats: every command's outcome is kept.
	from := applied + 1
	if c, err := w.js.Consumer(ctx, topology.StreamName, topology.ConsumerName); err == nil {
		from = min(from, c.CachedInfo().AckFloor.Stream+1)
	}
	log.Warn().Str("store", oldPath).Uint64("applied_seq", applied).Uint64("from_seq", from).Int("partitions", n).
		Msg("upgrading the store of the version before partitions: splitting it into the partitions' stores")
	dir := filepath.Join(w.cfg.DataDir, PartitionsDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	stores := make([]*storage.Store, n)
	tmp := func(p int) string { return storePath(p) + ".migrating" }
	defer func() {
		for p, s := range stores {
			if s != nil {
				s.Close()
				os.Remove(tmp(p))
			}
		}
	}()
	for p := range n {
		os.Remove(tmp(p))
		if stores[p], err = storage.Open(tmp(p), storage.Options{Timeout: time.Second, NoSync: w.cfg.NoSync}); err != nil {
			return err
		}
	}
	partOf := func(user string) int { return partition.Of(user, n) }
	if err := storage.Split(old, stores, partOf, from-1); err != nil {
		return err
	}
	last, n, err := w.applyLegacyTail(ctx, stores, from)
	if err != nil {
		return err
	}
	until := max(last, topology.LegacyUntil(w.stream.CachedInfo().Config), applied)
	for p, s := range stores {
		if err := s.Update(func(tx *storage.Tx) error { return tx.SetAppliedSeq(until) }); err != nil {
			return err
		}
		if err := s.Close(); err != nil {
			return err
		}
		stores[p] = nil
		if err := os.Rename(tmp(p), storePath(p)); err != nil {
			return err
		}
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	// Every partition's snapshot, so that the other workers can take the
	// partitions this one will not serve. Before this worker joins, with no
	// lease: the upgrade is the operator's; and snapshots never go
	// backwards in any case.
	for p := range n {
		if _, err := w.snaps.Save(ctx, p, storePath(p), until, func() error { return nil }); err != nil {
			return fmt.Errorf("upgrade: snapshot of %s: %w", partition.Name(p), err)
		}
	}
	if err := old.Close(); err != nil {
		return err
	}
	if err := os.Rename(oldPath, oldPath+".migrated"); err != nil {
		return err
	}
	if err := syncDir(w.cfg.DataDir); err != nil {
		return err
	}
	if w.cfg.CreateStream {
		// Its subjects are no longer stored; an operator's worker user may
		// not delete it, and `worker provision` does not need it.
		_ = w.js.DeleteConsumer(ctx, topology.StreamName, topology.ConsumerName)
	}
	log.Warn().Int("tail_applied", n).Uint64("applied_seq", until).Str("kept", oldPath+".migrated").
		Msg("upgrade done: the store is split into partitions")
	return nil
}

// applyLegacyTail applies the commands the stream holds under the old
// subjects (passkeys.cmd...) from sequence from on, each into its user's
// partition store. It returns the last sequence read and how many there were.
func (w *worker) applyLegacyTail(ctx context.Context, stores []*storage.Store, from uint64) (uint64, int, error) {
	filter := partition.CommandPrefix + ".>"
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	first, err := w.reader.Next(gctx, from, filter)
	cancel()
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("upgrade: %w", err)
	}
	appliers := make([]*command.Applier, len(stores))
	for p, s := range stores {
		appliers[p] = &command.Applier{Store: s, Verifier: w.verifier, Keys: w.keys.history, Retention: w.cfg.Retention, Log: w.log}
	}
	n := 0
	var last uint64
	for seq := first.Sequence; ; {
		// One at a time: the tail is what the old worker had not applied
		// when it stopped, a handful.
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		m, err := w.reader.Next(gctx, seq, filter)
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return last, n, nil
		}
		if err != nil {
			return 0, 0, fmt.Errorf("upgrade: %w", err)
		}
		cmd := &command.Command{Subject: m.Subject, Header: command.Header(m.Header), Body: m.Data, StreamSeq: m.Sequence, Timestamp: m.Time}
		_, user, _ := passkey.ParseSubject(partition.CommandPrefix, m.Subject)
		a := appliers[partition.Of(user, len(stores))]
		_, err = retry.Do(ctx, retry.InPlace, func() ([]command.Result, error) {
			res, err := a.Apply(ctx, []*command.Command{cmd})
			if err == nil && res[0].Transient != nil {
				err = res[0].Transient
			}
			return res, err
		}, nil)
		if err != nil {
			return 0, 0, fmt.Errorf("upgrade: apply stream sequence %d: %w", m.Sequence, err)
		}
		n++
		last = m.Sequence
		seq = m.Sequence + 1
	}
}

// syncDir makes renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
