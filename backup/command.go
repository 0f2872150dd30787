// Package backup takes consistent copies of the partitions' stores: the
// worker's /backup endpoint (Serve) and the `worker backup` command
// (Command), from a running worker or from a data directory no worker
// holds.
package backup

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/passkeys/worker/internal/cli"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/runner"
	"github.com/passkeys/worker/storage"
)

// Command is `worker backup`: a consistent copy of each partition's
// store, into a directory (one file per partition, partition.Name + ".db",
// what a data directory's partitions/ holds), from a running worker's
// /backup (the partitions it serves), or from a data directory no worker
// holds.
func Command(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "directory to write the copies to, one file per partition (required; each replaced atomically, mode 0600)")
	from := fs.String("from", "", "a running worker's --http-listen address, e.g. 127.0.0.1:9090: the partitions it serves")
	dataDir := fs.String("data-dir", "./data", "the data directory, when no worker is running on it")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: worker backup --out DIR [--from HOST:PORT | --data-dir DIR]\n\n")
		fs.PrintDefaults()
	}
	if done, err := cli.ParseFlags(fs, args, getenv); done || err != nil {
		return err
	}
	if *out == "" {
		fs.Usage()
		return errors.New("backup: --out is required")
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	var files []string
	var err error
	if *from != "" {
		files, err = copyFrom(*from, *out)
	} else {
		files, err = copyLocal(*dataDir, *out)
	}
	if err != nil {
		return err
	}
	total, err := verify(*out, files)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backup: %d partitions, %d bytes written to %s\n", len(files), total, *out)
	return nil
}

// copyFrom copies the partitions the worker at addr serves into out.
func copyFrom(addr, out string) ([]string, error) {
	parts, err := servedPartitions(addr)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	var files []string
	for _, p := range parts {
		name := partition.Name(p) + ".db"
		if err := backupFrom(addr, p, filepath.Join(out, name)); err != nil {
			return nil, fmt.Errorf("backup of partition %d: %w", p, err)
		}
		files = append(files, name)
	}
	return files, nil
}

// copyLocal copies the partition stores of dataDir into out.
func copyLocal(dataDir, out string) ([]string, error) {
	dir := filepath.Join(dataDir, runner.Dir)
	stores, err := filepath.Glob(filepath.Join(dir, "p*.db"))
	if err != nil {
		return nil, err
	}
	if len(stores) == 0 {
		return nil, fmt.Errorf("backup: no partition stores in %s", dir)
	}
	var files []string
	for _, path := range stores {
		if err := backupLocal(path, filepath.Join(out, filepath.Base(path))); err != nil {
			return nil, fmt.Errorf("backup: %w", err)
		}
		files = append(files, filepath.Base(path))
	}
	return files, nil
}

// verify opens every copy (a copy that does not open is no backup) and
// returns their total size.
func verify(out string, files []string) (int64, error) {
	var total int64
	for _, name := range files {
		path := filepath.Join(out, name)
		s, err := storage.Open(path, storage.Options{Timeout: time.Second})
		if err != nil {
			return 0, fmt.Errorf("backup: the copy %s does not open: %w", path, err)
		}
		if err := s.Close(); err != nil {
			return 0, err
		}
		if info, err := os.Stat(path); err == nil {
			total += info.Size()
		}
	}
	return total, nil
}

// servedPartitions asks a running worker which partitions it serves.
func servedPartitions(addr string) ([]int, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(baseURL(addr) + "/partitions")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st struct {
		Served []struct {
			Partition int `json:"partition"`
		} `json:"served"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("%s/partitions: %w", baseURL(addr), err)
	}
	var out []int
	for _, s := range st.Served {
		out = append(out, s.Partition)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the worker at %s serves no partition at the moment", addr)
	}
	return out, nil
}

func baseURL(addr string) string {
	url := strings.TrimSuffix(addr, "/")
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	return url
}

func backupLocal(path, out string) error {
	if storage.Unclean(path) {
		return fmt.Errorf("%s was left open without fsync by a crash or a power cut and may be torn: start the worker, which rebuilds it, and back it up with --from", path)
	}
	s, err := storage.Open(path, storage.Options{Timeout: time.Second})
	if errors.Is(err, storage.ErrLocked) {
		return fmt.Errorf("%w: a worker is running on it; use --from with its --http-listen address", err)
	}
	if err != nil {
		return err
	}
	defer s.Close()
	return storage.WriteFileAtomic(out, func(w io.Writer) error {
		_, _, err := s.Backup(w)
		return err
	})
}

func backupFrom(addr string, p int, out string) error {
	url := baseURL(addr)
	resp, err := (&http.Client{Timeout: 10 * time.Minute}).Get(url + "/backup?partition=" + strconv.Itoa(p))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s/backup: %s: %s", url, resp.Status, strings.TrimSpace(string(msg)))
	}
	return storage.WriteFileAtomic(out, func(w io.Writer) error {
		n, err := io.Copy(w, resp.Body)
		if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
			err = fmt.Errorf("got %d of %d bytes", n, resp.ContentLength)
		}
		return err
	})
}
