// Package lazyfs is a FUSE filesystem that simulates power loss, like
// Jepsen's lazyfs: a loopback mount of a backing directory that keeps every
// file write not yet fsynced in memory, apart from the backing directory,
// so that [FS.PowerCut] loses exactly what a power cut could lose.
//
//   - File data and size are buffered: writes land in an in-memory overlay
//     of the file (4 KiB pages), never in the backing file, and truncation
//     (truncate, ftruncate, O_TRUNC) and a growing fallocate only change
//     the overlay's size. Reads, mmap and stat see the overlay merged over
//     the backing file.
//   - fsync or fdatasync of a file writes its overlay to the backing file
//     and fsyncs that. All handles of a file share one overlay, so an fsync
//     through any of them makes all of the file durable, as on a real disk.
//   - Namespace operations (create, mkdir, unlink, rmdir, rename, link,
//     symlink) and metadata (mode, owner, times, xattrs) go straight to the
//     backing directory, durable at once, as in lazyfs. So a file created
//     and written but never fsynced survives a cut empty (or with its old
//     content), and renaming an unsynced new file over a synced old one
//     leaves the target empty after a cut: what ext4 without its
//     replace-via-rename heuristic (auto_da_alloc), or xfs, can do.
//
// Overlays are keyed by the backing file's inode number, since files are
// renamed while open; so the backing directory must be one filesystem.
//
// Mount needs root and /dev/fuse; it calls mount(2) itself, without
// fusermount. Whatever mmaps files in the mount must run in another
// process than the server: a page fault on the mount is no system call to
// the Go runtime, so a stop-the-world would wait for a goroutine that
// waits for the server.
package lazyfs

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Stats are counters since Mount.
type Stats struct {
	// Fsyncs counts fsync and fdatasync calls on files that reached the
	// filesystem. Directory fsyncs go straight to the backing directory,
	// uncounted.
	Fsyncs int64
	// Writes counts write requests; the kernel splits a write(2) larger
	// than 128 KiB into several.
	Writes int64
	// BytesPending is the size of the overlay pages held now.
	BytesPending int64
	// BytesDropped is the size of the overlay pages that power cuts
	// dropped.
	BytesDropped int64
	// Cuts counts power cuts.
	Cuts int64
	// Detached counts unmounts that found the mount busy and detached it
	// (MNT_DETACH) instead: the caller had not killed every process that
	// had a file in the mount open.
	Detached int64
}

// FS is a mounted lazyfs. Its methods are safe for concurrent use.
type FS struct {
	backing, mountpoint string

	mu     sync.Mutex // serialises PowerCut and Unmount
	server *fuse.Server
	gen    *generation

	fsyncs, writes, pending, dropped, cuts, detached atomic.Int64
}

// Mount mounts backing at mountpoint (both existing directories).
func Mount(backing, mountpoint string) (*FS, error) {
	b, err := filepath.Abs(backing)
	if err != nil {
		return nil, err
	}
	m, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, err
	}
	f := &FS{backing: b, mountpoint: m}
	if err := f.mount(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *FS) mount() error {
	var st unix.Stat_t
	if err := unix.Stat(f.backing, &st); err != nil {
		return fmt.Errorf("lazyfs: %w", err)
	}
	g := &generation{fs: f, files: make(map[uint64]*overlay)}
	root := &fs.LoopbackRoot{Path: f.backing, Dev: st.Dev}
	sec := time.Second
	srv, err := fs.Mount(f.mountpoint, &node{LoopbackNode: &fs.LoopbackNode{RootData: root}, g: g}, &fs.Options{
		EntryTimeout: &sec,
		AttrTimeout:  &sec,
		MountOptions: fuse.MountOptions{
			DirectMountStrict: true, // mount(2): there is no fusermount
			// The server is root: let the kernel check permissions, and
			// let other users in.
			AllowOther: true,
			Options:    []string{"default_permissions"},
			FsName:     f.backing,
			Name:       "lazyfs",
			// Passthrough would let the kernel bypass the overlays; a
			// writeback cache would keep writes in the kernel, and the
			// unmount of a power cut would flush them.
			DisabledCapabilities: fuse.CAP_PASSTHROUGH | fuse.CAP_WRITEBACK_CACHE,
			// Else the kernel asks for security.capability before every
			// write (a round trip, 40% slower). The price: a write by a
			// non-root user does not clear the file's suid/sgid bits.
			ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV_V2,
		},
	})
	if err != nil {
		return fmt.Errorf("lazyfs: mount %s: %w", f.mountpoint, err)
	}
	f.server, f.gen = srv, g
	return nil
}

// PowerCut drops every write not yet fsynced, then unmounts and mounts
// again, so that no kernel cache keeps dropped data; afterwards the mount
// shows exactly what is in the backing directory.
//
// The caller must first kill (SIGKILL, and wait for) every process that
// used the mount. If one still has a file open, the old mount is detached
// (see Stats.Detached); that process's file I/O then fails with EIO, but
// its namespace operations reach the backing directory until it closes
// its files.
func (f *FS) PowerCut() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.server == nil {
		return errors.New("lazyfs: not mounted")
	}
	f.dropped.Add(f.gen.kill())
	f.cuts.Add(1)
	if err := f.unmount(); err != nil {
		return err
	}
	return f.mount()
}

// Unmount unmounts, writing nothing back: what was not fsynced is lost as
// in a power cut (not counted as one), so that mounting the backing
// directory again shows what a test's writes made durable, and no more.
// Unmount is idempotent; the FS cannot be used afterwards.
func (f *FS) Unmount() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.server == nil {
		return nil
	}
	f.gen.kill()
	return f.unmount()
}

// unmount stops the server. go-fuse retries a busy unmount for a while;
// if the mount stays busy, detaching it frees the mountpoint for the next
// mount, and the old server serves its remaining users until they close
// their files.
func (f *FS) unmount() error {
	srv := f.server
	f.server = nil
	err := srv.Unmount()
	if err == nil {
		return nil
	}
	if derr := unix.Unmount(f.mountpoint, unix.MNT_DETACH); derr != nil {
		return fmt.Errorf("lazyfs: unmount %s: %w; detach: %w", f.mountpoint, err, derr)
	}
	f.detached.Add(1)
	return nil
}

// Stats returns the counters since Mount; power cuts do not reset them.
func (f *FS) Stats() Stats {
	return Stats{
		Fsyncs:       f.fsyncs.Load(),
		Writes:       f.writes.Load(),
		BytesPending: f.pending.Load(),
		BytesDropped: f.dropped.Load(),
		Cuts:         f.cuts.Load(),
		Detached:     f.detached.Load(),
	}
}
