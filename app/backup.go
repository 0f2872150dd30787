package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/passkeys/worker/storage"
)

// backupCommand is `worker backup`: a consistent copy of the store, from a
// running worker's /backup, or from the data directory when no worker holds it.
func backupCommand(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "file to write the copy to (required; replaced atomically, mode 0600)")
	from := fs.String("from", "", "a running worker's --http-listen address, e.g. 127.0.0.1:9090 (it holds the store's lock)")
	dataDir := fs.String("data-dir", "./data", "the data directory, when no worker is running on it")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: worker backup --out FILE [--from HOST:PORT | --data-dir DIR]\n\n")
		fs.PrintDefaults()
	}
	if done, err := parseWithEnv(fs, args, getenv); done || err != nil {
		return err
	}
	if *out == "" {
		fs.Usage()
		return errors.New("backup: --out is required")
	}
	var n int64
	var err error
	if *from != "" {
		n, err = backupFrom(*from, *out)
	} else {
		n, err = backupLocal(filepath.Join(*dataDir, StoreFile), *out)
	}
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	// A copy that does not open is no backup.
	s, err := storage.Open(*out, storage.Options{Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("backup: the copy does not open: %w", err)
	}
	if err := s.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backup: %d bytes written to %s\n", n, *out)
	return nil
}

func backupLocal(path, out string) (int64, error) {
	s, err := storage.Open(path, storage.Options{Timeout: time.Second})
	if errors.Is(err, storage.ErrLocked) {
		return 0, fmt.Errorf("%w: a worker is running on it; use --from with its --http-listen address", err)
	}
	if err != nil {
		return 0, err
	}
	defer s.Close()
	var n int64
	err = storage.WriteFileAtomic(out, func(w io.Writer) error {
		var err error
		n, err = s.Backup(w, nil)
		return err
	})
	return n, err
}

func backupFrom(addr, out string) (int64, error) {
	url := strings.TrimSuffix(addr, "/")
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	resp, err := (&http.Client{Timeout: 10 * time.Minute}).Get(url + "/backup")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("%s/backup: %s: %s", url, resp.Status, strings.TrimSpace(string(msg)))
	}
	var n int64
	err = storage.WriteFileAtomic(out, func(w io.Writer) error {
		var err error
		if n, err = io.Copy(w, resp.Body); err != nil {
			return err
		}
		if resp.ContentLength >= 0 && n != resp.ContentLength {
			return fmt.Errorf("got %d of %d bytes", n, resp.ContentLength)
		}
		return nil
	})
	return n, err
}
