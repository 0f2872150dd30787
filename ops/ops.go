// Package ops serves the operator's HTTP endpoints: /metrics, /healthz,
// /readyz, /partitions and /backup.
package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"golang.org/x/net/netutil"

	"github.com/passkeys/worker/backup"
	"github.com/passkeys/worker/metrics"
	"github.com/passkeys/worker/storage"
)

// Partitions are the partitions this worker runs (runner.Set).
type Partitions interface {
	// Ready says why the partitions keep the worker from taking work.
	Ready() error
	// Serving lists the partitions this worker serves.
	Serving() []int
	// Store is a served partition's store.
	Store(p int) (*storage.Store, bool)
	// Status is what /partitions reports.
	Status() map[string]any
}

// Health answers /healthz and /readyz.
type Health struct {
	Conn       *nats.Conn
	Stream     jetstream.Stream
	Partitions Partitions
	Writes     *StoreWrites
}

// StoreWrites remembers whether a partition's last store transaction
// failed: a worker whose commits fail (a full disk, a failing device) takes
// commands only to retry them, and must not say it is ready. Batch is a
// handler.Observer's.
type StoreWrites struct {
	mu      sync.Mutex
	lastErr error
}

func (w *StoreWrites) Batch(_ int, _ time.Duration, err error) {
	w.mu.Lock()
	w.lastErr = err
	w.mu.Unlock()
}

func (w *StoreWrites) failing() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// Ready reports why the worker cannot take work, or nil: it must be
// connected to NATS, its stream must exist, its last commit have succeeded,
// and its partitions be ready (Partitions.Ready).
func (h *Health) Ready(ctx context.Context) error {
	if !h.Conn.IsConnected() {
		return errors.New("not connected to NATS")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := h.Stream.Info(ctx); err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	if err := h.Writes.failing(); err != nil {
		return fmt.Errorf("store: the last commit failed: %w", err)
	}
	return h.Partitions.Ready()
}

// maxHTTPConns bounds the HTTP connections open at once: a scraper, a
// probe or two, an operator's backup.
const maxHTTPConns = 64

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

// Serve serves /metrics, /healthz, /readyz, /partitions and /backup on
// addr until the function it returns is called.
func Serve(addr string, m *metrics.Metrics, h *Health, dataDir string, log zerolog.Logger) (func(), error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := h.Ready(r.Context()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /backup", backupHandler(h, dataDir, log))
	mux.HandleFunc("GET /partitions", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(h.Partitions.Status())
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

// backupHandler serves /backup?partition=N to loopback clients, one backup
// at a time (each holds a copy of the store on disk).
func backupHandler(h *Health, dataDir string, log zerolog.Logger) http.HandlerFunc {
	backups := make(chan struct{}, 1)
	return func(w http.ResponseWriter, r *http.Request) {
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
		store, ok := h.Partitions.Store(p)
		if err != nil || !ok {
			http.Error(w, fmt.Sprintf("name one of the partitions this worker serves: /backup?partition=N, N in %v", h.Partitions.Serving()),
				http.StatusNotFound)
			return
		}
		backup.Serve(w, store, dataDir, log)
	}
}
