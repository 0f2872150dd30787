package lazyfs

import (
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// pageSize is the overlay's granularity. A write costs O(bytes written)
// plus at most two page reads, for its partial first and last pages.
const pageSize = 4096

// overlay is the unsynced state of one file.
type overlay struct {
	ino     uint64
	pending *atomic.Int64 // FS.pending
	refs    int           // open handles; guarded by generation.mu

	mu    sync.Mutex
	dead  bool  // dropped; its handles fail with EIO
	dirty bool  // differs from the backing file
	size  int64 // logical size
	// base is how much of the backing file is still content: truncating
	// below it makes the backing bytes beyond read as zeros, though the
	// backing file is only cut at fsync. base <= size.
	base  int64
	pages map[int64][]byte // by index; bytes at or beyond size are zero
}

func newOverlay(ino uint64, size int64, pending *atomic.Int64) *overlay {
	return &overlay{ino: ino, pending: pending, size: size, base: size, pages: make(map[int64][]byte)}
}

// readBacking fills buf with what the backing file contributes at off:
// its bytes below base, zeros elsewhere.
func (o *overlay) readBacking(fd int, buf []byte, off int64) error {
	n := 0
	if off < o.base {
		var err error
		// A regular file's pread is short only at its end.
		if n, err = unix.Pread(fd, buf[:min(int64(len(buf)), o.base-off)], off); err != nil {
			return err
		}
	}
	clear(buf[n:])
	return nil
}

// read reads the logical content at off into buf; it returns less than
// len(buf) only at the end of the file.
func (o *overlay) read(fd int, buf []byte, off int64) (int, error) {
	if off >= o.size {
		return 0, nil
	}
	buf = buf[:min(int64(len(buf)), o.size-off)]
	if err := o.readBacking(fd, buf, off); err != nil {
		return 0, err
	}
	end := off + int64(len(buf))
	for idx := off / pageSize; idx*pageSize < end; idx++ {
		if p, ok := o.pages[idx]; ok {
			ps := idx * pageSize
			lo, hi := max(off, ps), min(end, ps+pageSize)
			copy(buf[lo-off:hi-off], p[lo-ps:hi-ps])
		}
	}
	return len(buf), nil
}

func (o *overlay) write(fd int, data []byte, off int64) error {
	end := off + int64(len(data))
	for pos := off; pos < end; {
		idx := pos / pageSize
		ps := idx * pageSize
		p, ok := o.pages[idx]
		if !ok {
			p = make([]byte, pageSize)
			// A partial page starts from the current content.
			if pos > ps || end < ps+pageSize {
				if err := o.readBacking(fd, p, ps); err != nil {
					return err
				}
			}
			o.pages[idx] = p
			o.pending.Add(pageSize)
		}
		pos += int64(copy(p[pos-ps:], data[pos-off:]))
	}
	o.size = max(o.size, end)
	o.dirty = true
	return nil
}

func (o *overlay) truncate(size int64) {
	if size < o.size {
		o.base = min(o.base, size)
		for idx, p := range o.pages {
			if ps := idx * pageSize; ps >= size {
				delete(o.pages, idx)
				o.pending.Add(-pageSize)
			} else if ps+pageSize > size {
				clear(p[size-ps:])
			}
		}
	}
	// Growing needs nothing: what lies beyond the old size is zero.
	o.size = size
	o.dirty = true
}

// allocate buffers fallocate like a truncation that grows: mode 0 extends
// the size, KEEP_SIZE does nothing, since space is not what a power cut
// loses. Punching holes and zeroing ranges are not supported.
func (o *overlay) allocate(off, length uint64, mode uint32) syscall.Errno {
	switch {
	case mode == 0 && int64(off+length) > o.size:
		o.size = int64(off + length)
		o.dirty = true
	case mode != 0 && mode != unix.FALLOC_FL_KEEP_SIZE:
		return syscall.EOPNOTSUPP
	}
	return 0
}

// sync writes the overlay to the backing file, fsyncs that and empties the
// overlay.
func (o *overlay) sync(fd int) error {
	if o.dirty {
		// Cut the stale bytes first, so that holes between pages read as
		// zeros; then write the pages; then set the size.
		if err := unix.Ftruncate(fd, o.base); err != nil {
			return err
		}
		for idx, p := range o.pages {
			ps := idx * pageSize
			p = p[:min(pageSize, o.size-ps)]
			if n, err := unix.Pwrite(fd, p, ps); err != nil {
				return err
			} else if n < len(p) {
				return syscall.ENOSPC // a regular file writes short only when full
			}
		}
		if err := unix.Ftruncate(fd, o.size); err != nil {
			return err
		}
	}
	if err := unix.Fsync(fd); err != nil {
		return err
	}
	o.drop()
	o.base, o.dirty = o.size, false
	return nil
}

// drop forgets the pages and returns their size.
func (o *overlay) drop() int64 {
	n := int64(len(o.pages)) * pageSize
	o.pending.Add(-n)
	clear(o.pages)
	return n
}

// generation is the state of one mount. PowerCut replaces it, so that
// nodes and handles of the old mount cannot touch the new one's overlays.
type generation struct {
	fs *FS

	// mu guards dead, files and the overlays' refs. It is taken before an
	// overlay's mu.
	mu    sync.Mutex
	dead  bool
	files map[uint64]*overlay // by backing inode number
}

// kill marks the generation and its overlays dead and drops all pages,
// returning how many bytes it dropped.
func (g *generation) kill() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dead = true
	var n int64
	for _, o := range g.files {
		o.mu.Lock()
		n += o.drop()
		o.dead = true
		o.mu.Unlock()
	}
	clear(g.files)
	return n
}

// forgetLocked drops the overlay of ino unless a handle uses it: ino lost
// its last link, or is a new file reusing the number. g.mu is held.
func (g *generation) forgetLocked(ino uint64) {
	if o := g.files[ino]; o != nil && o.refs == 0 {
		o.mu.Lock()
		o.drop()
		o.dead = true
		o.mu.Unlock()
		delete(g.files, ino)
	}
}

// overlayLocked returns the overlay of the file st describes, creating it
// if needed. g.mu is held.
func (g *generation) overlayLocked(st *unix.Stat_t) (*overlay, error) {
	if g.dead {
		return nil, syscall.EIO
	}
	o := g.files[st.Ino]
	if o == nil {
		o = newOverlay(st.Ino, st.Size, &g.fs.pending)
		g.files[st.Ino] = o
	}
	return o, nil
}

// fixAttr replaces a regular file's backing size with its logical size.
func (g *generation) fixAttr(a *fuse.Attr) {
	if a.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return
	}
	g.mu.Lock()
	o := g.files[a.Ino]
	g.mu.Unlock()
	if o != nil {
		o.mu.Lock()
		if !o.dead {
			a.Size = uint64(o.size)
		}
		o.mu.Unlock()
	}
}
