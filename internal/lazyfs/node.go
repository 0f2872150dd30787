package lazyfs

import (
	"context"
	"path/filepath"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is a loopback node that sends file data through overlays. It
// overrides what opens a file, reports or changes a file's size, or removes
// a file's last link; the rest is go-fuse's loopback.
type node struct {
	*fs.LoopbackNode
	g *generation
}

// A method with a wrong signature would silently leave the loopback's in
// place, so check them.
var (
	_ fs.NodeWrapChilder    = (*node)(nil)
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeStatxer        = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeUnlinker       = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
	_ fs.NodeTmpfiler       = (*node)(nil)
	_ fs.NodeCopyFileRanger = (*node)(nil)
)

// WrapChild makes every node below the root a *node too.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &node{LoopbackNode: ops.(*fs.LoopbackNode), g: n.g}
}

func (n *node) backingPath(name string) string {
	return filepath.Join(n.RootData.Path, n.Path(n.Root()), name)
}

// Lookup reports the logical size: the kernel sets a file's size from it.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Lookup(ctx, name, out)
	n.g.fixAttr(&out.Attr)
	return ch, errno
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Link(ctx, target, name, out)
	n.g.fixAttr(&out.Attr)
	return ch, errno
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*handle); ok {
		return h.Getattr(ctx, out)
	}
	errno := n.LoopbackNode.Getattr(ctx, f, out)
	n.g.fixAttr(&out.Attr)
	return errno
}

// Statx refuses, so that the kernel falls back to Getattr for good; the
// loopback's statx would report backing sizes.
func (n *node) Statx(ctx context.Context, f fs.FileHandle, flags, mask uint32, out *fuse.StatxOut) syscall.Errno {
	return syscall.ENOSYS
}

// Setattr buffers a size change in the overlay and passes the rest (mode,
// owner, times) through.
func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	h, _ := f.(*handle)
	if size, ok := in.GetSize(); ok {
		if errno := n.truncate(h, int64(size)); errno != 0 {
			return errno
		}
		rest := *in
		rest.Valid &^= fuse.FATTR_SIZE
		in = &rest
	}
	if h != nil {
		errno := h.lf.Setattr(ctx, in, out)
		out.Size = h.size()
		return errno
	}
	errno := n.LoopbackNode.Setattr(ctx, nil, in, out)
	n.g.fixAttr(&out.Attr)
	return errno
}

func (n *node) truncate(h *handle, size int64) syscall.Errno {
	var o *overlay
	if h != nil {
		o = h.ov
	} else { // truncate(2) by path: the file need not be open
		var st unix.Stat_t
		n.g.mu.Lock()
		err := unix.Lstat(n.backingPath(""), &st)
		if err == nil {
			o, err = n.g.overlayLocked(&st)
		}
		n.g.mu.Unlock()
		if err != nil {
			return fs.ToErrno(err)
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.dead {
		return syscall.EIO
	}
	o.truncate(size)
	return 0
}

// backingFlags are the flags to open a backing file with: read-write
// whatever the caller asked for, since a partial-page write reads the page
// and an fsync through any handle writes the whole overlay. O_TRUNC is
// buffered; O_DIRECT would need aligned buffers and means nothing for data
// kept in memory; O_APPEND is the kernel's business.
func backingFlags(flags uint32) uint32 {
	return flags&^(syscall.O_TRUNC|syscall.O_DIRECT|syscall.O_APPEND|syscall.O_ACCMODE) | syscall.O_RDWR
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	// g.mu keeps an unlink from dropping the overlay before the handle
	// holds it.
	n.g.mu.Lock()
	defer n.g.mu.Unlock()
	fh, fuseFlags, errno := n.LoopbackNode.Open(ctx, backingFlags(flags))
	if errno == syscall.ETXTBSY || errno == syscall.EROFS || errno == syscall.EACCES {
		// Not writable: such a handle can still read what is synced.
		fh, fuseFlags, errno = n.LoopbackNode.Open(ctx, flags&^(syscall.O_TRUNC|syscall.O_DIRECT))
	}
	if errno != 0 {
		return nil, 0, errno
	}
	h, errno := n.g.attachLocked(ctx, fh, false, flags)
	return h, fuseFlags, errno
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	n.g.mu.Lock()
	defer n.g.mu.Unlock()
	var st unix.Stat_t
	existed := unix.Lstat(n.backingPath(name), &st) == nil
	ch, fh, fuseFlags, errno := n.LoopbackNode.Create(ctx, name, backingFlags(flags), mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	h, errno := n.g.attachLocked(ctx, fh, !existed, flags)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	out.Attr.Size = h.size()
	return ch, h, fuseFlags, 0
}

// Unlink drops the overlay of a file that loses its last link, unless a
// handle uses it; then its last Release does.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	n.g.mu.Lock()
	defer n.g.mu.Unlock()
	var st unix.Stat_t
	lerr := unix.Lstat(n.backingPath(name), &st)
	errno := n.LoopbackNode.Unlink(ctx, name)
	if errno == 0 && lerr == nil && st.Nlink <= 1 {
		n.g.forgetLocked(st.Ino)
	}
	return errno
}

// Rename drops the overlay of a target it replaces, as Unlink does.
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	n.g.mu.Lock()
	defer n.g.mu.Unlock()
	var src, dst unix.Stat_t
	serr := unix.Lstat(n.backingPath(name), &src)
	var derr error = syscall.ENOENT
	if np, ok := newParent.(*node); ok {
		derr = unix.Lstat(np.backingPath(newName), &dst)
	}
	errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
	replaced := errno == 0 && flags&unix.RENAME_EXCHANGE == 0 && serr == nil && derr == nil
	if replaced && src.Ino != dst.Ino && dst.Nlink <= 1 {
		n.g.forgetLocked(dst.Ino)
	}
	return errno
}

// Tmpfile refuses: an O_TMPFILE file has no path for the loopback to use.
func (n *node) Tmpfile(ctx context.Context, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EOPNOTSUPP
}

// CopyFileRange refuses, so that the kernel falls back to reads and writes.
func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EOPNOTSUPP
}
