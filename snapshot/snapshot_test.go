package snapshot_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/snapshot"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
)

// store writes a partition store file that applied the stream up to
// applied, and returns its path.
func store(t *testing.T, applied uint64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "p000.db")
	s, err := storage.Open(path, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(tx *storage.Tx) error {
		if err := tx.SetStream("stream-a"); err != nil {
			return err
		}
		return tx.SetAppliedSeq(applied)
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func bucket(t *testing.T) (*snapshot.Store, jetstream.ObjectStore) {
	t.Helper()
	snaps, obj, _ := bucketJS(t)
	return snaps, obj
}

func bucketJS(t *testing.T) (*snapshot.Store, jetstream.ObjectStore, jetstream.JetStream) {
	t.Helper()
	ns := testenv.StartNATS(t)
	js, err := jetstream.New(testenv.Connect(t, ns.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := js.CreateObjectStore(context.Background(), topology.Settings{Replicas: 1}.SnapshotBucketConfig())
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(context.Background(), topology.SnapshotStream)
	if err != nil {
		t.Fatal(err)
	}
	return snapshot.New(obj, stream, zerolog.Nop()), obj, js
}

func held() error { return nil }

// Snapshots never go backwards: an older one saved after a newer one (a
// stale worker's, late) hides nothing, the newest is what a taker loads,
// and only the two newest are kept.
func TestSnapshotsNeverGoBackwards(t *testing.T) {
	snaps, obj := bucket(t)
	ctx := context.Background()
	for _, applied := range []uint64{10, 30} {
		if saved, err := snaps.Save(ctx, 0, store(t, applied), applied, held); err != nil || !saved {
			t.Fatalf("save %d: %v %v", applied, saved, err)
		}
	}
	if saved, err := snaps.Save(ctx, 0, store(t, 20), 20, held); err != nil || saved {
		t.Fatalf("an older snapshot after a newer one: saved %v (%v), want not saved", saved, err)
	}
	if saved, err := snaps.Save(ctx, 0, store(t, 40), 40, func() error { return errors.New("the lease is gone") }); err == nil || saved {
		t.Fatalf("a save whose fence says the lease is gone: saved %v (%v)", saved, err)
	}
	if _, err := snaps.Save(ctx, 0, store(t, 50), 50, held); err != nil {
		t.Fatal(err)
	}
	newest, ok, err := snaps.Newest(ctx, 0)
	if err != nil || !ok || newest.Applied != 50 {
		t.Fatalf("newest: %+v %v %v", newest, ok, err)
	}
	objs, err := obj.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range objs {
		names = append(names, o.Name)
	}
	if strings.Join(names, " ") != "p000.00000000000000000030 p000.00000000000000000050" {
		t.Fatalf("snapshots kept: %v, want the two newest", names)
	}
	// A taker loads the newest, only when it is ahead of its own store.
	dst := filepath.Join(t.TempDir(), "p000.db")
	info, loaded, err := snaps.Fetch(ctx, 0, 0, dst, nil, held, nil)
	if err != nil || !loaded || info.Applied != 50 {
		t.Fatalf("fetch: %+v %v %v", info, loaded, err)
	}
	if _, loaded, err := snaps.Fetch(ctx, 0, 50, dst, nil, held, nil); err != nil || loaded {
		t.Fatalf("fetch when the local store is as new: loaded %v (%v)", loaded, err)
	}
	// A snapshot its taker does not accept (here: of another stream
	// PASSKEYS, one created again) is never loaded, and the local store
	// stays as it was; set aside, it is no longer the newest.
	local := store(t, 5)
	before, err := os.ReadFile(local)
	if err != nil {
		t.Fatal(err)
	}
	var seen snapshot.State
	accept := func(st snapshot.State) error {
		seen = st
		if st.Stream != "stream-b" {
			return errors.New("built from another stream")
		}
		return nil
	}
	refused, loaded, err := snaps.Fetch(ctx, 0, 5, local, accept, held, nil)
	if !errors.Is(err, snapshot.ErrRefused) || loaded || seen.Stream != "stream-a" || seen.Applied != 50 {
		t.Fatalf("fetch of another stream's snapshot: loaded %v (%v; the taker saw %+v), want ErrRefused", loaded, err, seen)
	}
	if after, err := os.ReadFile(local); err != nil || !bytes.Equal(before, after) {
		t.Fatalf("the local store changed under a refused snapshot (%v)", err)
	}
	if err := snaps.SetAside(ctx, refused, "built from another stream", held); err != nil {
		t.Fatal(err)
	}
	if newest, ok, err := snaps.Newest(ctx, 0); err != nil || !ok || newest.Applied != 30 {
		t.Fatalf("newest after setting 50 aside: %+v %v %v, want 30", newest, ok, err)
	}
	// A snapshot whose file does not hold what its name says is refused.
	if _, err := snaps.Save(ctx, 1, store(t, 60), 60, held); err != nil {
		t.Fatal(err)
	}
	bad := store(t, 61)
	if _, err := obj.Put(ctx, jetstream.ObjectMeta{Name: "p001.00000000000000000070", Metadata: map[string]string{"applied-seq": "70"}},
		mustOpen(t, bad)); err != nil {
		t.Fatal(err)
	}
	// (passed over for the next older one, and set aside: it is broken)
	if got, loaded, err := snaps.Fetch(ctx, 1, 0, filepath.Join(t.TempDir(), "p001.db"), nil, held, nil); err != nil || !loaded || got.Applied != 60 {
		t.Fatalf("a snapshot whose state is not its name's: loaded %+v %v (%v), want the one before it (60)", got, loaded, err)
	}
	if newest, ok, err := snaps.Newest(ctx, 1); err != nil || !ok || newest.Applied != 60 {
		t.Fatalf("newest of p001 after the broken one was set aside: %+v %v %v, want 60", newest, ok, err)
	}
}

func mustOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// A snapshot whose chunks are gone (an upload that failed half way, after
// its description was stored: nats.go purges the chunks then) is passed
// over for the next older one, rather than failing every takeover.
func TestBrokenNewestSnapshotFallsBackToAnOlder(t *testing.T) {
	ctx := context.Background()
	snaps, obj, js := bucketJS(t)
	for _, applied := range []uint64{10, 30} {
		if _, err := snaps.Save(ctx, 0, store(t, applied), applied, held); err != nil {
			t.Fatal(err)
		}
	}
	info, err := obj.GetInfo(ctx, "p000.00000000000000000030")
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, "OBJ_"+topology.SnapshotBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject("$O."+topology.SnapshotBucket+".C."+info.NUID)); err != nil {
		t.Fatal(err)
	}
	// (No deadline on ctx: nats.go then gives up on a missing chunk after
	// its own timeout, as it does under a lease's context.)
	got, loaded, err := snaps.Fetch(ctx, 0, 0, filepath.Join(t.TempDir(), "p000.db"), nil, held, nil)
	if err != nil || !loaded || got.Applied != 10 {
		t.Fatalf("fetch with a broken newest: %+v loaded %v (%v), want the older one (10)", got, loaded, err)
	}
}
