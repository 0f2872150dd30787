package lazyfs

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// overlayModel is an overlay over a real backing file, with the content it
// should have: logical, and what fsyncs made durable.
type overlayModel struct {
	t                *testing.T
	fh               *os.File
	pending          atomic.Int64
	o                *overlay
	logical, durable []byte
}

// TestOverlayModel runs random writes, truncations, fallocates, fsyncs and
// power cuts on an overlay, checking every read, the backing file after
// each fsync, and the pending count against the model. It needs no FUSE.
func TestOverlayModel(t *testing.T) {
	fh, err := os.Create(filepath.Join(t.TempDir(), "file"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	m := &overlayModel{t: t, fh: fh}
	m.o = newOverlay(1, 0, &m.pending)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		m.step(rng)
		buf := make([]byte, max(len(m.logical), 2*pageSize)+pageSize)
		n, err := m.o.read(int(fh.Fd()), buf, 0)
		if err != nil || !bytes.Equal(buf[:n], m.logical) {
			t.Fatalf("op %d: read %d bytes, %v; differs from the model (%d bytes)", i, n, err, len(m.logical))
		}
		off := rng.Int64N(int64(len(m.logical)) + 1)
		want := m.logical[off:min(int64(len(m.logical)), off+int64(2*pageSize))]
		n, err = m.o.read(int(fh.Fd()), buf[:2*pageSize], off)
		if err != nil || !bytes.Equal(buf[:n], want) {
			t.Fatalf("op %d: read at %d: %d bytes, %v; differs from the model (%d bytes)", i, off, n, err, len(want))
		}
		if want := int64(len(m.o.pages)) * pageSize; m.pending.Load() != want {
			t.Fatalf("op %d: pending = %d, want %d", i, m.pending.Load(), want)
		}
	}
}

// step applies one random operation to the overlay and the model.
func (m *overlayModel) step(rng *rand.Rand) {
	fd := int(m.fh.Fd())
	switch op := rng.IntN(20); {
	case op < 12:
		off := rng.Int64N(5 * pageSize)
		data := make([]byte, rng.IntN(3*pageSize))
		for j := range data {
			data[j] = byte('a' + rng.IntN(26))
		}
		if err := m.o.write(fd, data, off); err != nil {
			m.t.Fatal(err)
		}
		m.logical = grow(m.logical, off+int64(len(data)))
		copy(m.logical[off:], data)
	case op < 15:
		size := rng.Int64N(6 * pageSize)
		m.o.truncate(size)
		m.logical = grow(m.logical[:min(int64(len(m.logical)), size)], size)
	case op < 16:
		off, n := rng.Uint64N(6*pageSize), rng.Uint64N(pageSize)
		if errno := m.o.allocate(off, n, 0); errno != 0 {
			m.t.Fatal(errno)
		}
		m.logical = grow(m.logical, int64(off+n))
	case op < 19:
		if err := m.o.sync(fd); err != nil {
			m.t.Fatal(err)
		}
		m.durable = bytes.Clone(m.logical)
		if got, _ := os.ReadFile(m.fh.Name()); !bytes.Equal(got, m.durable) {
			m.t.Fatal("backing file after fsync differs from the model")
		}
	default: // power cut
		m.o.drop()
		st, err := m.fh.Stat()
		if err != nil {
			m.t.Fatal(err)
		}
		m.o = newOverlay(1, st.Size(), &m.pending)
		m.logical = bytes.Clone(m.durable)
	}
}

// grow extends b with zeros to size n.
func grow(b []byte, n int64) []byte {
	if n > int64(len(b)) {
		b = append(b, make([]byte, n-int64(len(b)))...)
	}
	return b
}
