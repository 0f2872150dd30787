package ownership

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/passkeys/worker/storage"
)

// IDFile holds the worker's member id in its data directory, so a
// restarted worker is the same member and takes its partitions back (with
// their local state) when they are still free.
const IDFile = "worker-id"

// MemberID reads the data directory's worker id, or makes one: the host
// name and random hex.
func MemberID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, IDFile)
	raw, err := os.ReadFile(path)
	if err == nil {
		if id := strings.TrimSpace(string(raw)); validID(id) {
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

// validID accepts what can be a key token of the lease bucket.
func validID(id string) bool {
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
