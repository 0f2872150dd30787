package backup

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
)

// stalledWriter is a client that takes the first bytes of a response and
// then stops reading until released.
type stalledWriter struct {
	header  http.Header
	mu      sync.Mutex
	buf     bytes.Buffer
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func (w *stalledWriter) Header() http.Header { return w.header }
func (w *stalledWriter) WriteHeader(int)     {}
func (w *stalledWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.started); <-w.release })
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// A backup client that reads a little and pauses does not hold up the
// store: the copy is taken into a file first, so while the client stalls,
// a commit that grows the store (and so must remap it, which waits for every
// read transaction) goes through. The stalled client then gets a whole,
// valid store, and the temporary file is gone.
func TestBackupDoesNotHoldTheStore(t *testing.T) {
	dir := t.TempDir()
	store, err := storage.Open(filepath.Join(dir, "store.db"), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	putUsers := func(from, n int) error {
		return store.Update(func(tx *storage.Tx) error {
			for i := from; i < from+n; i++ {
				u := &passkey.User{ID: "user-" + strconv.Itoa(i), ResourceOwner: "org1", Sequence: 1,
					Passkeys: []passkey.Passkey{{ID: "pk-1", Name: "a passkey with a name", State: passkey.StateReady}}}
				if err := tx.PutUser(u); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := putUsers(0, 10); err != nil {
		t.Fatal(err)
	}
	w := &stalledWriter{header: http.Header{}, started: make(chan struct{}), release: make(chan struct{})}
	served := make(chan struct{})
	go func() {
		defer close(served)
		Serve(w, store, dir, zerolog.Nop())
	}()
	<-w.started
	committed := make(chan error, 1)
	go func() { committed <- putUsers(10, 20000) }() // far past the first mmap: a remap
	select {
	case err := <-committed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		close(w.release)
		t.Fatal("a commit waited for the stalled backup client: a read transaction is held while it is sent")
	}
	close(w.release)
	<-served
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(copyPath, w.buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	cp, err := storage.Open(copyPath, storage.Options{})
	if err != nil {
		t.Fatalf("the backup does not open: %v", err)
	}
	defer cp.Close()
	if err := cp.View(func(tx *storage.Tx) error {
		u, err := tx.User("user-9")
		if u == nil {
			t.Error("the backup misses a user stored before it")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".backup-*")); len(left) != 0 {
		t.Errorf("temporary backup files left behind: %v", left)
	}
}
