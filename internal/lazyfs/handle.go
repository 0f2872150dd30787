package lazyfs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// handle is an open file. The LoopbackFile is a field, not embedded, so
// that go-fuse cannot find its PassthroughFd, Read or Write and bypass the
// overlay. Without Getlk and Setlk, the kernel emulates flock and fcntl
// locks locally, which is what bbolt's flock needs.
type handle struct {
	g  *generation
	lf *fs.LoopbackFile
	fd int // lf's descriptor, valid until Release
	ov *overlay
}

var (
	_ fs.FileReader    = (*handle)(nil)
	_ fs.FileWriter    = (*handle)(nil)
	_ fs.FileFsyncer   = (*handle)(nil)
	_ fs.FileFlusher   = (*handle)(nil)
	_ fs.FileReleaser  = (*handle)(nil)
	_ fs.FileGetattrer = (*handle)(nil)
	_ fs.FileAllocater = (*handle)(nil)
)

// attachLocked makes a handle on the overlay of the file that the
// loopback's Open or Create opened. fresh says the file is new, so an
// overlay under its inode number is stale. g.mu is held.
func (g *generation) attachLocked(ctx context.Context, fh fs.FileHandle, fresh bool, flags uint32) (*handle, syscall.Errno) {
	lf := fh.(*fs.LoopbackFile)
	fd, _ := lf.PassthroughFd() // borrows the fd
	var st unix.Stat_t
	err := unix.Fstat(fd, &st)
	var o *overlay
	if err == nil {
		if fresh {
			g.forgetLocked(st.Ino)
		}
		o, err = g.overlayLocked(&st)
	}
	if err != nil {
		lf.Release(ctx)
		return nil, fs.ToErrno(err)
	}
	o.refs++
	h := &handle{g: g, lf: lf, fd: fd, ov: o}
	if flags&syscall.O_TRUNC != 0 {
		o.mu.Lock()
		o.truncate(0)
		o.mu.Unlock()
	}
	return h, 0
}

// do runs fn on the overlay under its lock, unless a power cut dropped it.
func (h *handle) do(fn func(o *overlay) error) syscall.Errno {
	h.ov.mu.Lock()
	defer h.ov.mu.Unlock()
	if h.ov.dead {
		return syscall.EIO
	}
	return fs.ToErrno(fn(h.ov))
}

func (h *handle) Read(ctx context.Context, buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	var n int
	errno := h.do(func(o *overlay) (err error) {
		n, err = o.read(h.fd, buf, off)
		return err
	})
	return fuse.ReadResultData(buf[:n]), errno
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.g.fs.writes.Add(1)
	errno := h.do(func(o *overlay) error { return o.write(h.fd, data, off) })
	if errno != 0 {
		return 0, errno
	}
	return uint32(len(data)), 0
}

// Fsync serves fsync and fdatasync alike: both make data and size durable.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	h.g.fs.fsyncs.Add(1)
	return h.do(func(o *overlay) error { return o.sync(h.fd) })
}

func (h *handle) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	return h.do(func(o *overlay) error {
		if errno := o.allocate(off, size, mode); errno != 0 {
			return errno
		}
		return nil
	})
}

// Flush (on close) writes nothing: closing a file does not make it durable.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return h.lf.Flush(ctx) }

// Release drops the overlay with the last handle if the overlay holds
// nothing, or if the file has no links left: once the backing fd closes,
// its inode number may be reused, and must not bring stale data along.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	g, o := h.g, h.ov
	g.mu.Lock()
	o.refs--
	if o.refs == 0 && g.files[o.ino] == o {
		o.mu.Lock()
		dirty := o.dirty
		o.mu.Unlock()
		var st unix.Stat_t
		if !dirty || (unix.Fstat(h.fd, &st) == nil && st.Nlink == 0) {
			g.forgetLocked(o.ino)
		}
	}
	g.mu.Unlock()
	return h.lf.Release(ctx)
}

func (h *handle) size() uint64 {
	h.ov.mu.Lock()
	defer h.ov.mu.Unlock()
	return uint64(h.ov.size)
}

func (h *handle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	errno := h.lf.Getattr(ctx, out)
	out.Size = h.size()
	return errno
}
