package lazyfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// Tests that mmap files on the mount do so in a child process (this test
// binary, re-executed with helperEnv set): see the package doc.
const (
	helperEnv     = "LAZYFS_TEST_HELPER"
	helperPathEnv = "LAZYFS_TEST_PATH"
)

func TestMain(m *testing.M) {
	if cmd := os.Getenv(helperEnv); cmd != "" {
		if err := runHelper(cmd, os.Getenv(helperPathEnv)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// mountT mounts a fresh backing directory and returns the FS, the backing
// directory and the mountpoint. It skips the test where FUSE is missing.
func mountT(t *testing.T) (*FS, string, string) {
	t.Helper()
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no FUSE: %v", err)
	}
	dev.Close()
	backing, mnt := t.TempDir(), t.TempDir()
	f, err := Mount(backing, mnt)
	if errors.Is(err, syscall.EPERM) {
		t.Skipf("mounting FUSE not permitted: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	return f, backing, mnt
}

// cut cuts the power and checks that the unmount was clean, i.e. that the
// test closed everything it opened.
func cut(t *testing.T, f *FS) {
	t.Helper()
	if err := f.PowerCut(); err != nil {
		t.Fatalf("PowerCut: %v", err)
	}
	if d := f.Stats().Detached; d != 0 {
		t.Fatalf("Detached = %d after PowerCut, want 0", d)
	}
}

// writeAt writes data at off in p (creating it), fsyncs it if sync is set,
// and closes it.
func writeAt(t *testing.T, p string, off int64, data string, sync bool) {
	t.Helper()
	fh, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteAt([]byte(data), off); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := fh.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}
}

// checkFile checks p's size (stat) and content.
func checkFile(t *testing.T, p, want string) {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(len(want)) || string(got) != want {
		t.Fatalf("%s: size %d, content %s; want size %d, content %s",
			filepath.Base(p), st.Size(), trim(got), len(want), trim([]byte(want)))
	}
}

// trim quotes b, shortened to its start if it is long.
func trim(b []byte) string {
	if len(b) > 64 {
		return fmt.Sprintf("%q...(%d bytes)", b[:64], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// withFile opens p read-write, runs fn and closes p.
func withFile(t *testing.T, p string, flag int, fn func(fh *os.File) error) {
	t.Helper()
	fh, err := os.OpenFile(p, flag, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if err := fn(fh); err != nil {
		t.Fatal(err)
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}
}

type cutCase struct {
	name       string
	setup      func(t *testing.T, p string) // before: made durable by the test
	act        func(t *testing.T, p string)
	wantBefore string // content after act
	wantAfter  string // content after the power cut
}

func runCutCases(t *testing.T, cases []cutCase) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, _, mnt := mountT(t)
			p := filepath.Join(mnt, "file")
			if tc.setup != nil {
				tc.setup(t, p)
			}
			tc.act(t, p)
			checkFile(t, p, tc.wantBefore)
			cut(t, f)
			checkFile(t, p, tc.wantAfter)
		})
	}
}

func synced(data string) func(t *testing.T, p string) {
	return func(t *testing.T, p string) { writeAt(t, p, 0, data, true) }
}

func TestPowerCutKeepsOnlySyncedData(t *testing.T) { runCutCases(t, dataCases) }

var dataCases = []cutCase{{
	name:       "new file written, not synced",
	act:        func(t *testing.T, p string) { writeAt(t, p, 0, "hello", false) },
	wantBefore: "hello",
	wantAfter:  "",
}, {
	name:       "old content overwritten, not synced",
	setup:      synced("old content"),
	act:        func(t *testing.T, p string) { writeAt(t, p, 0, "NEW", false) },
	wantBefore: "NEW content",
	wantAfter:  "old content",
}, {
	name:       "written and fsynced",
	act:        func(t *testing.T, p string) { writeAt(t, p, 0, "hello", true) },
	wantBefore: "hello",
	wantAfter:  "hello",
}, {
	name: "written and fdatasynced",
	act: func(t *testing.T, p string) {
		withFile(t, p, os.O_RDWR|os.O_CREATE, func(fh *os.File) error {
			if _, err := fh.WriteString("hello"); err != nil {
				return err
			}
			return unix.Fdatasync(int(fh.Fd()))
		})
	},
	wantBefore: "hello",
	wantAfter:  "hello",
}, {
	// nats-server opens its files O_SYNC with sync_always; the kernel
	// then fsyncs after each write.
	name: "written with O_SYNC",
	act: func(t *testing.T, p string) {
		withFile(t, p, os.O_RDWR|os.O_CREATE|os.O_SYNC, func(fh *os.File) error {
			_, err := fh.WriteString("hello")
			return err
		})
	},
	wantBefore: "hello",
	wantAfter:  "hello",
}, {
	name:       "A synced, B over part of it not synced",
	setup:      synced("AAAAAAAA"),
	act:        func(t *testing.T, p string) { writeAt(t, p, 2, "BB", false) },
	wantBefore: "AABBAAAA",
	wantAfter:  "AAAAAAAA",
}, {
	// The backing file must not be opened O_APPEND: pwrite there appends,
	// and the fsync would write the overlay's page after the old content.
	name:  "appended through O_APPEND and fsynced",
	setup: synced("hello world"),
	act: func(t *testing.T, p string) {
		withFile(t, p, os.O_WRONLY|os.O_APPEND, func(fh *os.File) error {
			if _, err := fh.WriteString("!!"); err != nil {
				return err
			}
			return fh.Sync()
		})
	},
	wantBefore: "hello world!!",
	wantAfter:  "hello world!!",
}, {
	name: "written through one handle, fsynced through another",
	act: func(t *testing.T, p string) {
		withFile(t, p, os.O_RDWR|os.O_CREATE, func(w *os.File) error {
			if _, err := w.WriteString("shared"); err != nil {
				return err
			}
			r, err := os.Open(p)
			if err != nil {
				return err
			}
			defer r.Close()
			return r.Sync()
		})
	},
	wantBefore: "shared",
	wantAfter:  "shared",
}}

func TestPowerCutRestoresSize(t *testing.T) { runCutCases(t, sizeCases) }

const oldContent = "hello world"

var sizeCases = []cutCase{{
	name:       "truncate by path",
	setup:      synced(oldContent),
	act:        func(t *testing.T, p string) { must(t, os.Truncate(p, 5)) },
	wantBefore: "hello",
	wantAfter:  oldContent,
}, {
	name:  "ftruncate",
	setup: synced(oldContent),
	act: func(t *testing.T, p string) {
		withFile(t, p, os.O_RDWR, func(fh *os.File) error { return fh.Truncate(5) })
	},
	wantBefore: "hello",
	wantAfter:  oldContent,
}, {
	name:  "open with O_TRUNC",
	setup: synced(oldContent),
	act: func(t *testing.T, p string) {
		withFile(t, p, os.O_WRONLY|os.O_TRUNC, func(*os.File) error { return nil })
	},
	wantBefore: "",
	wantAfter:  oldContent,
}, {
	name:  "append after fsync",
	setup: synced(oldContent),
	act: func(t *testing.T, p string) {
		withFile(t, p, os.O_WRONLY|os.O_APPEND, func(fh *os.File) error {
			_, err := fh.WriteString("!!")
			return err
		})
	},
	wantBefore: oldContent + "!!",
	wantAfter:  oldContent,
}, {
	name:  "fallocate grows",
	setup: synced(oldContent),
	act: func(t *testing.T, p string) {
		withFile(t, p, os.O_RDWR, func(fh *os.File) error {
			return unix.Fallocate(int(fh.Fd()), 0, 0, 16)
		})
	},
	wantBefore: oldContent + "\x00\x00\x00\x00\x00",
	wantAfter:  oldContent,
}, {
	// The bytes that the truncation cut read as zeros, though the
	// backing file keeps them until an fsync.
	name:  "shrink, write beyond, not synced",
	setup: synced(strings.Repeat("A", 3*pageSize)),
	act: func(t *testing.T, p string) {
		withFile(t, p, os.O_RDWR, func(fh *os.File) error {
			if err := fh.Truncate(10); err != nil {
				return err
			}
			_, err := fh.WriteAt([]byte("B"), 5000)
			return err
		})
	},
	wantBefore: strings.Repeat("A", 10) + strings.Repeat("\x00", 4990) + "B",
	wantAfter:  strings.Repeat("A", 3*pageSize),
}, {
	name:  "shrink, write beyond, fsync",
	setup: synced(strings.Repeat("A", 3*pageSize)),
	act: func(t *testing.T, p string) {
		withFile(t, p, os.O_RDWR, func(fh *os.File) error {
			if err := fh.Truncate(10); err != nil {
				return err
			}
			if _, err := fh.WriteAt([]byte("B"), 5000); err != nil {
				return err
			}
			return fh.Sync()
		})
	},
	wantBefore: strings.Repeat("A", 10) + strings.Repeat("\x00", 4990) + "B",
	wantAfter:  strings.Repeat("A", 10) + strings.Repeat("\x00", 4990) + "B",
}}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRenameOverSyncedFile: the rename is durable at once, the new file's
// data is not, so the target ends up empty, as ext4 without its
// replace-via-rename heuristic (auto_da_alloc) or xfs can leave it.
func TestRenameOverSyncedFile(t *testing.T) {
	f, _, mnt := mountT(t)
	target, tmp := filepath.Join(mnt, "target"), filepath.Join(mnt, "target.tmp")
	writeAt(t, target, 0, "old", true)
	writeAt(t, tmp, 0, "new content", false)
	must(t, os.Rename(tmp, target))
	checkFile(t, target, "new content")
	cut(t, f)
	checkFile(t, target, "")
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat %s after cut: %v, want not exist", tmp, err)
	}
}

func TestReadsMergeOverlayOverBackingFile(t *testing.T) {
	_, backing, mnt := mountT(t)
	p := filepath.Join(mnt, "file")
	orig := bytes.Repeat([]byte("a"), 3*pageSize+100)
	writeAt(t, p, 0, string(orig), true)

	want := bytes.Clone(orig)
	for _, w := range []struct {
		off  int64
		data string
	}{
		{5000, "XYZ"},                                 // inside a page
		{pageSize - 2, "PQRS"},                        // across a page boundary
		{int64(len(orig)) + 10, "TAIL"},               // beyond the end: a hole
		{3 * pageSize, strings.Repeat("F", pageSize)}, // a full page
	} {
		writeAt(t, p, w.off, w.data, false)
		if end := w.off + int64(len(w.data)); end > int64(len(want)) {
			want = append(want, make([]byte, end-int64(len(want)))...)
		}
		copy(want[w.off:], w.data)
	}

	checkFile(t, p, string(want))
	withFile(t, p, os.O_RDONLY, func(fh *os.File) error {
		buf := make([]byte, 10)
		if _, err := fh.ReadAt(buf, pageSize-5); err != nil {
			return err
		}
		if !bytes.Equal(buf, want[pageSize-5:pageSize+5]) {
			return fmt.Errorf("ReadAt(%d) = %q, want %q", pageSize-5, buf, want[pageSize-5:pageSize+5])
		}
		return nil
	})
	// Sizes the kernel learns from a lookup (readdirplus) or a link are
	// logical sizes too.
	entries, err := os.ReadDir(mnt)
	must(t, err)
	info, err := entries[0].Info()
	must(t, err)
	must(t, os.Link(p, p+".link"))
	checkFile(t, p+".link", string(want))
	if info.Size() != int64(len(want)) {
		t.Fatalf("size from ReadDir = %d, want %d", info.Size(), len(want))
	}
	var stx unix.Statx_t
	must(t, unix.Statx(unix.AT_FDCWD, p, 0, unix.STATX_ALL, &stx))
	if stx.Size != uint64(len(want)) {
		t.Fatalf("size from statx = %d, want %d", stx.Size, len(want))
	}
	// The unsynced writes are kept apart from the backing file.
	checkFile(t, filepath.Join(backing, "file"), string(orig))

	got := helper(t, "mmap", p, nil)
	if !bytes.Equal(got, want) {
		t.Fatalf("mmap read %s, want %s", trim(got), trim(want))
	}
}

func TestBoltSurvivesPowerCut(t *testing.T) {
	f, _, mnt := mountT(t)
	db := filepath.Join(mnt, "bolt.db")

	// The writer commits a (synced) and b (NoSync), then waits to be
	// killed, as a worker would be.
	cmd := helperCmd("bolt-write", db)
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	must(t, err)
	defer stdin.Close()
	must(t, cmd.Start())
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if line != "ok\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("bolt-write: %q, %v; stderr: %s", line, err, stderr.String())
	}
	must(t, cmd.Process.Kill())
	if err := cmd.Wait(); err == nil {
		t.Fatal("bolt-write exited cleanly, want killed")
	}

	if got := string(helper(t, "bolt-read", db, nil)); got != "a=1 b=2" {
		t.Fatalf("before the cut: %q, want %q", got, "a=1 b=2")
	}
	cut(t, f)
	if got := string(helper(t, "bolt-read", db, nil)); got != "a=1 b=" {
		t.Fatalf("after the cut: %q, want %q", got, "a=1 b=")
	}
}

func TestStats(t *testing.T) {
	f, _, mnt := mountT(t)
	p := filepath.Join(mnt, "file")
	check := func(what string, got, want int64) {
		t.Helper()
		if got != want {
			t.Fatalf("%s = %d, want %d", what, got, want)
		}
	}
	withFile(t, p, os.O_RDWR|os.O_CREATE, func(fh *os.File) error {
		if _, err := fh.WriteAt([]byte("x"), 0); err != nil {
			return err
		}
		if _, err := fh.WriteAt([]byte("y"), 2*pageSize); err != nil {
			return err
		}
		check("Writes", f.Stats().Writes, 2)
		check("BytesPending after 2 writes in 2 pages", f.Stats().BytesPending, 2*pageSize)
		if err := fh.Sync(); err != nil {
			return err
		}
		check("BytesPending after fsync", f.Stats().BytesPending, 0)
		if err := unix.Fdatasync(int(fh.Fd())); err != nil {
			return err
		}
		_, err := fh.WriteAt([]byte("z"), 1)
		return err
	})
	check("Fsyncs", f.Stats().Fsyncs, 2)
	check("BytesPending after 1 unsynced write", f.Stats().BytesPending, pageSize)
	cut(t, f)
	s := f.Stats()
	check("BytesPending after cut", s.BytesPending, 0)
	check("BytesDropped", s.BytesDropped, pageSize)
	check("Cuts", s.Cuts, 1)
	check("Fsyncs after cut", s.Fsyncs, 2)
}

// TestUnlinkedFiles: an open file keeps its unsynced data when unlinked,
// and a new file never inherits an unlinked file's overlay, though ext4
// tends to give it the same inode number.
func TestUnlinkedFiles(t *testing.T) {
	_, backing, mnt := mountT(t)
	p := filepath.Join(mnt, "file")
	withFile(t, p, os.O_RDWR|os.O_CREATE, func(fh *os.File) error {
		if _, err := fh.WriteString("open"); err != nil {
			return err
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		buf := make([]byte, 4)
		if _, err := fh.ReadAt(buf, 0); err != nil || string(buf) != "open" {
			return fmt.Errorf("read of unlinked open file: %q, %v; want %q", buf, err, "open")
		}
		return nil
	})

	ino := func() uint64 {
		var st unix.Stat_t
		must(t, unix.Stat(filepath.Join(backing, "file"), &st))
		return st.Ino
	}
	reused := 0
	for range 5 {
		writeAt(t, p, 0, "stale data", false)
		old := ino()
		must(t, os.Remove(p))
		withFile(t, p, os.O_RDWR|os.O_CREATE|os.O_EXCL, func(*os.File) error { return nil })
		if ino() == old {
			reused++
		}
		checkFile(t, p, "")
		must(t, os.Remove(p))
	}
	t.Logf("a new file reused the unlinked file's inode number %d times in 5", reused)
}

// TestPowerCutWithFileOpen: a process that survives a power cut keeps the
// old mount busy; PowerCut detaches it, and that process's I/O fails.
func TestPowerCutWithFileOpen(t *testing.T) {
	f, _, mnt := mountT(t)
	p := filepath.Join(mnt, "file")
	writeAt(t, p, 0, "synced", true)
	fh, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, err)
	defer fh.Close()
	if _, err := fh.WriteAt([]byte("lost"), 0); err != nil {
		t.Fatal(err)
	}
	must(t, f.PowerCut())
	if d := f.Stats().Detached; d != 1 {
		t.Fatalf("Detached = %d, want 1", d)
	}
	if _, err := fh.WriteAt([]byte("late"), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write on the detached mount: %v, want EIO", err)
	}
	checkFile(t, p, "synced")
}

func helperCmd(cmd, path string) *exec.Cmd {
	c := exec.Command(os.Args[0], "-test.run=^$")
	c.Env = append(os.Environ(), helperEnv+"="+cmd, helperPathEnv+"="+path)
	return c
}

// helper runs a helper command to completion and returns its stdout.
func helper(t *testing.T, cmd, path string, stdin io.Reader) []byte {
	t.Helper()
	c := helperCmd(cmd, path)
	c.Stdin = stdin
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("helper %s: %v; stderr: %s", cmd, err, stderr.String())
	}
	return out
}

func runHelper(cmd, path string) error {
	switch cmd {
	case "mmap":
		return mmapCat(path)
	case "bolt-write":
		return boltWrite(path)
	case "bolt-read":
		return boltRead(path)
	}
	return fmt.Errorf("unknown helper %q", cmd)
}

// mmapCat writes p's content, read through a read-only shared mmap, to
// stdout.
func mmapCat(p string) error {
	fh, err := os.Open(p)
	if err != nil {
		return err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return err
	}
	mem, err := syscall.Mmap(int(fh.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return err
	}
	defer syscall.Munmap(mem)
	_, err = os.Stdout.Write(mem)
	return err
}

func boltWrite(p string) error {
	db, err := bolt.Open(p, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	put := func(k, v string) error {
		return db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			return b.Put([]byte(k), []byte(v))
		})
	}
	if err := put("a", "1"); err != nil {
		return err
	}
	db.NoSync = true
	if err := put("b", "2"); err != nil {
		return err
	}
	fmt.Println("ok")
	_, err = io.Copy(io.Discard, os.Stdin) // until killed
	return err
}

// boltRead prints "a=<a> b=<b>" after checking the database's consistency.
func boltRead(p string) error {
	db, err := bolt.Open(p, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("bolt check: %w", err)
		}
		b := tx.Bucket([]byte("b"))
		if b == nil {
			return errors.New("bucket b missing")
		}
		fmt.Printf("a=%s b=%s", b.Get([]byte("a")), b.Get([]byte("b")))
		return nil
	})
}
