package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"golang.org/x/net/netutil"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/metrics"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
)

// health answers /healthz and /readyz.
type health struct {
	nc     *nats.Conn
	stream jetstream.Stream
	parts  *partitionSet
	writes *storeWrites
}

// maxEventsWaiting is how long events may wait in the outbox before the
// worker says it is not ready.
const maxEventsWaiting = time.Minute

// storeWrites remembers whether the consumer's last store transaction
// failed: a worker whose commits fail (a full disk, a failing device) takes
// commands only to retry them, and must not say it is ready. It is one more
// Observer of the consumer.
type storeWrites struct {
	mu      sync.Mutex
	lastErr error
}

func (w *storeWrites) Batch(_ int, _ time.Duration, err error) {
	w.mu.Lock()
	w.lastErr = err
	w.mu.Unlock()
}

func (w *storeWrites) failing() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

func (*storeWrites) Answered(passkey.Op, passkey.Code, string, time.Time) {}
func (*storeWrites) Redelivered()                                         {}
func (*storeWrites) Changed()                                             {}

// maxSnapshotAgeFactor: a partition whose snapshot is older than this many
// snapshot intervals makes the worker not ready.
const maxSnapshotAgeFactor = 10

// ready reports why the worker cannot take work, or nil: it must be
// connected to NATS, its stream must exist, the store of every partition it
// serves be open and its last commit have succeeded, the outboxes be
// emptied and the snapshots be recent.
func (h *health) ready(ctx context.Context) error {
	if !h.nc.IsConnected() {
		return errors.New("not connected to NATS")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := h.stream.Info(ctx); err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	if err := h.writes.failing(); err != nil {
		return fmt.Errorf("store: the last commit failed: %w", err)
	}
	maxAge := maxSnapshotAgeFactor * h.parts.cfg.snapshotEvery()
	for p, err := range h.parts.Unrecoverable() {
		return fmt.Errorf("partition %d cannot be rebuilt: %w", p, err)
	}
	for _, pt := range h.parts.served() {
		if err := pt.store.View(func(*storage.Tx) error { return nil }); err != nil {
			return fmt.Errorf("store of partition %d: %w", pt.p, err)
		}
		if d := pt.events.Waiting(); d > maxEventsWaiting {
			return fmt.Errorf("partition %d: events have waited %s in the outbox without it being emptied", pt.p, d.Round(time.Second))
		}
		if d := time.Since(pt.snapTime()); d > maxAge {
			return fmt.Errorf("partition %d: its last snapshot is %s old", pt.p, d.Round(time.Second))
		}
	}
	return nil
}

// registerGauges adds the gauges read at scrape time.
func registerGauges(m *metrics.Metrics, parts *partitionSet, v *auth.Verifier, keys *trustedKeys, replies *handler.ReplyGuard) {
	m.CounterFunc("passkeys_replies_resent_total", "Replies sent again because nobody was there to take them (the requester's connection was cut).",
		func() float64 { return float64(replies.Resent()) })
	m.CounterFunc("passkeys_replies_given_up_total", "Replies nobody took after their last try (the requester left; it may ask again with its Nats-Msg-Id).",
		func() float64 { return float64(replies.GivenUp()) })
	sum := func(f func(*storage.Store) (int, error)) float64 {
		total := 0
		for _, pt := range parts.served() {
			n, err := f(pt.store)
			if err != nil {
				return -1
			}
			total += n
		}
		return float64(total)
	}
	// Both consumer gauges come from one Info call per partition: a scrape
	// reads them together, so an answer younger than a second serves the
	// second one.
	var mu sync.Mutex
	var pending, ackPending float64
	var at time.Time
	consumers := func() (float64, float64) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(at) < time.Second {
			return pending, ackPending
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		pending, ackPending = 0, 0
		for _, pt := range parts.served() {
			ci, err := pt.cons.Info(ctx)
			if err != nil {
				pending, ackPending = -1, -1
				break
			}
			pending += float64(ci.NumPending)
			ackPending += float64(ci.NumAckPending)
		}
		at = time.Now()
		return pending, ackPending
	}
	m.Gauge("passkeys_consumer_pending", "Commands of the partitions this worker serves not yet delivered to it (-1: unknown).", func() float64 {
		p, _ := consumers()
		return p
	})
	m.Gauge("passkeys_consumer_ack_pending", "Commands delivered and not yet acknowledged (-1: unknown).", func() float64 {
		_, a := consumers()
		return a
	})
	m.Gauge("passkeys_partitions_served", "Partitions this worker serves.", func() float64 {
		return float64(len(parts.Held()))
	})
	m.GaugeVec("passkeys_partition_snapshot_age_seconds", "Age of the newest snapshot of each partition this worker serves.", "partition",
		func() map[string]float64 {
			out := map[string]float64{}
			for _, pt := range parts.served() {
				out[strconv.Itoa(pt.p)] = time.Since(pt.snapTime()).Seconds()
			}
			return out
		})
	m.Gauge("passkeys_snapshot_failures", "Snapshots that could not be written since the worker started.", func() float64 {
		return float64(parts.snapFailures.Load())
	})
	m.Gauge("passkeys_partitions_unrecoverable", "Partitions whose state could not be rebuilt here from a snapshot and the stream: not served.", func() float64 {
		return float64(len(parts.Unrecoverable()))
	})
	m.Gauge("passkeys_outcome_records", "Outcome records held for repeats, in the partitions this worker serves (-1: unknown).", func() float64 {
		return sum(func(s *storage.Store) (int, error) { n, err := s.OutcomeCount(); return int(n), err })
	})
	m.Gauge("passkeys_events_waiting", "Events in the outboxes, written with their change and not yet published (-1: unknown).", func() float64 {
		return sum(func(s *storage.Store) (int, error) { return s.OutboxLen() })
	})
	m.Gauge("passkeys_tokens_cached", "Verified tokens in the signature cache.", func() float64 {
		return float64(v.CachedTokens())
	})
	m.Gauge("passkeys_jwks_file_differs", "1 while this worker's --jwks file differs from the newest key set of the key history, which every worker judges by.", func() float64 {
		if keys.differs.Load() {
			return 1
		}
		return 0
	})
	m.Gauge("passkeys_key_sets", "Key sets in the key history (PASSKEYS_JWKS).", func() float64 {
		return float64(keys.history.Sets())
	})
}

// maxHTTPConns bounds the HTTP connections open at once: a scraper, a
// probe or two, an operator's backup.
const maxHTTPConns = 64

// backupWriteTimeout bounds the transfer of one backup.
const backupWriteTimeout = 30 * time.Minute

// serveBackup copies the store to a file in the data directory, from one
// read transaction, and then sends the file: no read transaction is held
// open while a slow client reads (it would keep the store from reusing
// pages and so grow it). The file is removed afterwards.
func serveBackup(w http.ResponseWriter, r *http.Request, store *storage.Store, dataDir string, log zerolog.Logger) {
	f, err := os.CreateTemp(dataDir, ".backup-*.tmp")
	if err != nil {
		log.Error().Err(err).Msg("backup: temporary file")
		http.Error(w, "backup failed; see the worker's log", http.StatusInternalServerError)
		return
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Chmod(0o600); err != nil {
		log.Error().Err(err).Msg("backup: temporary file")
		http.Error(w, "backup failed; see the worker's log", http.StatusInternalServerError)
		return
	}
	n, err := store.Backup(f, nil)
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

// newHTTPServer is the worker's HTTP server: every phase of a request has a
// deadline, idle connections are closed, and headers are small.
func newHTTPServer(h http.Handler, log zerolog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second, // /backup sets its own, longer
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          stdlog.New(warnWriter{log}, "", 0),
	}
}

// warnWriter turns the HTTP server's own error lines into warn events.
type warnWriter struct{ log zerolog.Logger }

func (w warnWriter) Write(p []byte) (int, error) {
	w.log.Warn().Str("component", "http").Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// serveHTTP serves /metrics, /healthz, /readyz and /backup on addr until ctx ends.
func serveHTTP(ctx context.Context, addr string, m *metrics.Metrics, h *health, dataDir string, log zerolog.Logger) (func(), error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := h.ready(r.Context()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	backups := make(chan struct{}, 1) // one backup at a time: each holds a copy of the store on disk
	mux.HandleFunc("GET /backup", func(w http.ResponseWriter, r *http.Request) {
		// The whole user database: only for a client on this machine.
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			http.Error(w, "backups are served to loopback clients only", http.StatusForbidden)
			return
		}
		select {
		case backups <- struct{}{}:
			defer func() { <-backups }()
		default:
			http.Error(w, "a backup is already being taken; try again when it is done", http.StatusServiceUnavailable)
			return
		}
		p, err := strconv.Atoi(r.URL.Query().Get("partition"))
		pt, ok := h.parts.servedPart(p)
		if err != nil || !ok {
			http.Error(w, fmt.Sprintf("name one of the partitions this worker serves: /backup?partition=N, N in %v", h.parts.Held()),
				http.StatusNotFound)
			return
		}
		serveBackup(w, r, pt.store, dataDir, log)
	})
	mux.HandleFunc("GET /partitions", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(h.parts.status())
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--http-listen: %w", err)
	}
	// Bounded, so that idle or slow clients cannot take the worker's file
	// descriptors (which its embedded NATS server shares) or its time.
	l = netutil.LimitListener(l, maxHTTPConns)
	srv := newHTTPServer(mux, log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("HTTP server")
		}
	}()
	log.Info().Str("http_listen", l.Addr().String()).Msg("serving /metrics, /healthz, /readyz")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
