// Package snapshot keeps the partitions' snapshots in object store
// PASSKEYS_SNAPSHOTS, so that a partition's state outlives any worker: a
// worker that takes a partition over loads its newest snapshot and applies
// the stream after it.
//
// Snapshots never move backwards. Each is its own object, named after the
// partition and the stream sequence its state has applied
// (p003.00000000000000012345), and the newest is the one that applied the
// most: a late upload from a worker that lost the partition adds an older
// snapshot beside the newer one and hides nothing. Deleting keeps the two
// newest, so nothing newer than an uploader's own is ever deleted. Uploads
// are fenced too: the uploader checks its lease right before.
package snapshot

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/storage"
)

// metaApplied is the object metadata holding a snapshot's applied stream
// sequence (what its name says, and all the version before had).
const metaApplied = "applied-seq"

// keep is how many snapshots of a partition are kept: the newest, and one
// before it for a worker that is still downloading it.
const keep = 2

// Info names one snapshot.
type Info struct {
	Name string
	// Applied is the last stream sequence its state applied.
	Applied uint64
	// Time is when it was written (the NATS server's time).
	Time time.Time
}

// Store is the snapshot bucket.
type Store struct {
	obj    jetstream.ObjectStore
	stream jetstream.Stream // the bucket's stream: nil, and a snapshot's chunks are not counted
	log    zerolog.Logger
}

// New returns the snapshots of object store obj.
func New(obj jetstream.ObjectStore, stream jetstream.Stream, log zerolog.Logger) *Store {
	return &Store{obj: obj, stream: stream, log: log}
}

// ErrBroken is a snapshot that cannot be loaded, whoever tries: chunks
// missing, a file that does not open, or one that does not hold what its
// name says.
var ErrBroken = errors.New("the snapshot is broken")

// complete tells whether every chunk of snapshot name is in the bucket's
// stream (true when it cannot count them).
func (s *Store) complete(ctx context.Context, name string) (bool, error) {
	if s.stream == nil {
		return true, nil
	}
	oi, err := s.obj.GetInfo(ctx, name)
	if err != nil {
		return false, err
	}
	chunks := "$O." + oi.Bucket + ".C." + oi.NUID
	si, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(chunks))
	if err != nil {
		return false, err
	}
	return si.State.Subjects[chunks] >= uint64(oi.Chunks), nil
}

// name is the object name of partition p's snapshot that applied applied.
func name(p int, applied uint64) string {
	return fmt.Sprintf("%s.%020d", partition.Name(p), applied)
}

// list returns partition p's snapshots, newest first.
func (s *Store) list(ctx context.Context, p int) ([]Info, error) {
	objs, err := s.obj.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("snapshots: %w", err)
	}
	prefix := partition.Name(p)
	var out []Info
	for _, o := range objs {
		if o.Deleted || (o.Name != prefix && !strings.HasPrefix(o.Name, prefix+".")) {
			continue
		}
		// The version before named a partition's one snapshot after the
		// partition alone; every snapshot carries its sequence in metadata.
		applied, err := strconv.ParseUint(o.Metadata[metaApplied], 10, 64)
		if err != nil {
			s.log.Warn().Str("snapshot", o.Name).Msg("a snapshot without its applied sequence is ignored")
			continue
		}
		out = append(out, Info{Name: o.Name, Applied: applied, Time: o.ModTime})
	}
	slices.SortFunc(out, func(a, b Info) int {
		return cmp.Or(cmp.Compare(b.Applied, a.Applied), strings.Compare(b.Name, a.Name))
	})
	return out, nil
}

// Newest is partition p's newest snapshot; ok is false when it has none.
func (s *Store) Newest(ctx context.Context, p int) (Info, bool, error) {
	all, err := s.list(ctx, p)
	if err != nil || len(all) == 0 {
		return Info{}, false, err
	}
	return all[0], true, nil
}

// Save uploads the store file at path, whose state applied the stream up
// to applied, as a snapshot of partition p, unless one that applied as much
// or more is there already (saved false). fence is checked right before the
// upload: an error from it (the lease is gone) stops the upload. Snapshots
// older than the newest two are deleted afterwards.
func (s *Store) Save(ctx context.Context, p int, path string, applied uint64, fence func() error) (bool, error) {
	newest, ok, err := s.Newest(ctx, p)
	if err != nil {
		return false, err
	}
	if ok && newest.Applied >= applied {
		return false, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if err := fence(); err != nil {
		return false, fmt.Errorf("snapshot of %s not written: %w", partition.Name(p), err)
	}
	_, err = s.obj.Put(ctx, jetstream.ObjectMeta{
		Name:     name(p, applied),
		Metadata: map[string]string{metaApplied: strconv.FormatUint(applied, 10)},
	}, f)
	if err != nil {
		// nats.go purges the chunks of a failed upload, but its description
		// may have been stored already: delete it, or it would be listed,
		// and taken for the newest, with nothing behind it.
		// (Only when its chunks are missing: a Put that timed out waiting
		// for its acknowledgements may have stored everything, and a
		// snapshot of the same name may be another worker's, complete.)
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		if ok, cerr := s.complete(dctx, name(p, applied)); cerr == nil && !ok {
			_ = s.obj.Delete(dctx, name(p, applied))
		}
		cancel()
		return false, fmt.Errorf("snapshot of %s: %w", partition.Name(p), err)
	}
	s.prune(ctx, p)
	return true, nil
}

// prune deletes partition p's snapshots but the newest keep.
func (s *Store) prune(ctx context.Context, p int) {
	all, err := s.list(ctx, p)
	if err != nil || len(all) <= keep {
		return
	}
	for _, old := range all[keep:] {
		if err := s.obj.Delete(ctx, old.Name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			s.log.Warn().Err(err).Str("snapshot", old.Name).Msg("could not delete an old snapshot")
		}
	}
}

// ErrRefused is a snapshot its taker found not to belong to the stream
// (Fetch's accept): never loaded.
var ErrRefused = errors.New("the snapshot does not belong to the stream")

// State is what a snapshot's file says of the stream it follows: the
// stream's identity, the last sequence applied and that command's stream
// timestamp (zero where the state did not keep them).
type State struct {
	Stream    string
	Applied   uint64
	AppliedAt time.Time
}

// Fetch writes partition p's newest snapshot to the file dst (atomically,
// mode 0600) when it applied more than local, and returns it; loaded is
// false when there is none newer. The file is opened and its applied
// sequence checked against the snapshot's, and its State given to accept,
// before it replaces dst: an error from accept is ErrRefused (dst stays as
// it was). progress, when set, is called as the download goes on.
//
// A snapshot that is broken (ErrBroken: chunks missing after an upload
// that failed half way, a file that does not open or does not hold what
// its name says) or was deleted meanwhile is passed over for the next
// older one ahead of local, and a broken one is set aside (fence checked
// first); any other error (a timeout, a connection cut) is returned, so
// that the takeover is tried again rather than rebuilt from an older state.
func (s *Store) Fetch(ctx context.Context, p int, local uint64, dst string, accept func(State) error, fence func() error,
	progress func()) (info Info, loaded bool, err error) {
	all, err := s.list(ctx, p)
	if err != nil || len(all) == 0 || all[0].Applied <= local {
		if len(all) > 0 {
			info = all[0]
		}
		return info, false, err
	}
	var first error
	for _, c := range all {
		if c.Applied <= local {
			break
		}
		err := s.fetch(ctx, c, dst, accept, progress)
		switch {
		case err == nil:
			return c, true, nil
		case errors.Is(err, ErrBroken):
			s.log.Error().Err(err).Str("snapshot", c.Name).Msg("a broken snapshot is set aside (refused.<name>); the next older one is tried")
			if err := s.SetAside(ctx, c, err.Error(), fence); err != nil {
				s.log.Warn().Err(err).Str("snapshot", c.Name).Msg("could not set the broken snapshot aside")
			}
		case errors.Is(err, jetstream.ErrObjectNotFound) && ctx.Err() == nil:
		default:
			return c, false, err
		}
		if first == nil {
			first = err
		}
	}
	return all[0], false, first
}

func (s *Store) fetch(ctx context.Context, info Info, dst string, accept func(State) error, progress func()) error {
	if ok, err := s.complete(ctx, info.Name); err != nil {
		return fmt.Errorf("snapshot %s: %w", info.Name, err)
	} else if !ok {
		return fmt.Errorf("snapshot %s: chunks missing: %w", info.Name, ErrBroken)
	}
	tmp := dst + ".loading"
	defer os.Remove(tmp)
	err := storage.WriteFileAtomic(tmp, func(w io.Writer) error {
		obj, err := s.obj.Get(ctx, info.Name)
		if err != nil {
			return err
		}
		defer obj.Close()
		_, err = io.Copy(progressWriter{w, progress}, obj)
		return err
	})
	if errors.Is(err, jetstream.ErrDigestMismatch) {
		return fmt.Errorf("load snapshot %s: %w: %w", info.Name, ErrBroken, err)
	}
	if err != nil {
		return fmt.Errorf("load snapshot %s: %w", info.Name, err)
	}
	st0, err := storage.Open(tmp, storage.Options{Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("snapshot %s does not open: %w: %w", info.Name, ErrBroken, err)
	}
	var st State
	err = st0.View(func(tx *storage.Tx) error {
		st = State{Stream: tx.Stream(), Applied: tx.AppliedSeq(), AppliedAt: tx.AppliedAt()}
		return nil
	})
	if cerr := st0.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", info.Name, err)
	}
	if st.Applied != info.Applied {
		return fmt.Errorf("snapshot %s holds a state that applied the stream up to %d, not %d: %w", info.Name, st.Applied, info.Applied, ErrBroken)
	}
	if accept != nil {
		if err := accept(st); err != nil {
			return fmt.Errorf("snapshot %s: %w: %w", info.Name, ErrRefused, err)
		}
	}
	return os.Rename(tmp, dst)
}

// progressWriter calls progress after each write.
type progressWriter struct {
	w        io.Writer
	progress func()
}

func (p progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	if p.progress != nil {
		p.progress()
	}
	return n, err
}

// SetAside renames a snapshot found not to belong to the stream out of the
// partition's snapshots (refused.<name>, why in its description), so that
// it is neither loaded nor taken for the newest again; an operator may
// look at it, and remove it. fence is checked right before.
func (s *Store) SetAside(ctx context.Context, info Info, why string, fence func() error) error {
	obj, err := s.obj.GetInfo(ctx, info.Name)
	if err != nil {
		return err
	}
	if err := fence(); err != nil {
		return err
	}
	meta := obj.ObjectMeta
	meta.Name, meta.Description = "refused."+info.Name, why
	return s.obj.UpdateMeta(ctx, info.Name, meta)
}
