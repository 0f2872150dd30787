package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/metrics"
	"github.com/passkeys/worker/storage"
)

// health answers /healthz and /readyz.
type health struct {
	nc    *nats.Conn
	cons  jetstream.Consumer
	store *storage.Store
}

// ready reports why the worker cannot take work, or nil: it must be
// connected to NATS, its stream and consumer must exist, its store be open.
func (h *health) ready(ctx context.Context) error {
	if !h.nc.IsConnected() {
		return errors.New("not connected to NATS")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := h.cons.Info(ctx); err != nil {
		return fmt.Errorf("stream or consumer: %w", err)
	}
	if err := h.store.View(func(*storage.Tx) error { return nil }); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// registerGauges adds the gauges read at scrape time.
func registerGauges(m *metrics.Metrics, cons jetstream.Consumer, store *storage.Store, v *auth.Verifier) {
	// Both consumer gauges come from one Info call: a scrape reads them
	// together, so an answer younger than a second serves the second one.
	var mu sync.Mutex
	var last *jetstream.ConsumerInfo
	var at time.Time
	info := func() *jetstream.ConsumerInfo {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(at) < time.Second {
			return last
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		last, _ = cons.Info(ctx) // nil on error: the gauges say -1
		at = time.Now()
		return last
	}
	m.Gauge("passkeys_consumer_pending", "Commands in the stream not yet delivered to the worker (-1: unknown).", func() float64 {
		if ci := info(); ci != nil {
			return float64(ci.NumPending)
		}
		return -1
	})
	m.Gauge("passkeys_consumer_ack_pending", "Commands delivered and not yet acknowledged (-1: unknown).", func() float64 {
		if ci := info(); ci != nil {
			return float64(ci.NumAckPending)
		}
		return -1
	})
	m.Gauge("passkeys_outcome_records", "Outcome records held for repeats (-1: unknown).", func() float64 {
		n, err := store.OutcomeCount()
		if err != nil {
			return -1
		}
		return float64(n)
	})
	m.Gauge("passkeys_tokens_cached", "Verified tokens in the signature cache.", func() float64 {
		return float64(v.CachedTokens())
	})
}

// serveHTTP serves /metrics, /healthz and /readyz on addr until ctx ends.
func serveHTTP(ctx context.Context, addr string, m *metrics.Metrics, h *health, log zerolog.Logger) (func(), error) {
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
	mux.HandleFunc("GET /backup", func(w http.ResponseWriter, r *http.Request) {
		// The whole user database: only for a client on this machine.
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			http.Error(w, "backups are served to loopback clients only", http.StatusForbidden)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		n, err := h.store.Backup(w, func(size int64) { w.Header().Set("Content-Length", strconv.FormatInt(size, 10)) })
		if err != nil {
			log.Error().Err(err).Int64("written", n).Msg("backup")
			return
		}
		log.Info().Int64("bytes", n).Msg("backup served")
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--http-listen: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
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
