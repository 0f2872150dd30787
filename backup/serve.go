package backup

import (
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/passkeys/worker/storage"
)

// backupWriteTimeout bounds the transfer of one backup.
const backupWriteTimeout = 30 * time.Minute

// Serve copies the store to a file in the data directory, from one
// read transaction, and then sends the file: no read transaction is held
// open while a slow client reads (it would keep the store from reusing
// pages and so grow it). The file is removed afterwards.
func Serve(w http.ResponseWriter, store *storage.Store, dataDir string, log zerolog.Logger) {
	f, err := os.CreateTemp(dataDir, ".backup-*.tmp")
	if err == nil {
		defer os.Remove(f.Name())
		defer f.Close()
		err = f.Chmod(0o600)
	}
	if err != nil {
		log.Error().Err(err).Msg("backup: temporary file")
		http.Error(w, "backup failed; see the worker's log", http.StatusInternalServerError)
		return
	}
	n, _, err := store.Backup(f)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		log.Error().Err(err).Int64("written", n).Msg("backup")
		http.Error(w, "backup failed; see the worker's log", http.StatusInternalServerError)
		return
	}
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(backupWriteTimeout))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	sent, err := io.Copy(w, f)
	if err != nil {
		log.Warn().Err(err).Int64("sent", sent).Int64("bytes", n).Msg("backup: the client did not take it all")
		return
	}
	log.Info().Int64("bytes", n).Msg("backup served")
}
