// Package app assembles the worker (WTF Dial's Main): the configuration and
// its flags, and the wiring that opens the parts in order, serves until the
// context ends, and closes them in reverse. What each part does lives in
// its own package: topology (what JetStream holds), trust (the key sets in
// force), ownership and runner (the partitions this worker serves),
// handler (applying commands), service (the endpoints), reply, outbox,
// snapshot, upgrade, ops (HTTP), metrics.
package app

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/internal/clock"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/natsconn"
	"github.com/passkeys/worker/internal/telemetry/otlphttp"
	"github.com/passkeys/worker/metrics"
	"github.com/passkeys/worker/ops"
	"github.com/passkeys/worker/ownership"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/runner"
	"github.com/passkeys/worker/service"
	"github.com/passkeys/worker/snapshot"
	"github.com/passkeys/worker/topology"
	"github.com/passkeys/worker/trust"
	"github.com/passkeys/worker/upgrade"
)

// Run runs the worker until ctx ends, then shuts down in order: stop taking
// requests and commands, finish those in hand, flush, close.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.FaultClock != "" {
		go followClock(ctx, cfg.FaultClock, log)
	}
	w := &worker{cfg: cfg, log: log, storeWrites: &ops.StoreWrites{}}
	defer w.close()
	if err := w.open(ctx); err != nil {
		return err
	}
	return w.serve(ctx)
}

// followClock puts this worker's clocks off as the fault campaign's file
// at path says (--fault-clock), until ctx ends.
func followClock(ctx context.Context, path string, log zerolog.Logger) {
	clock.Follow(ctx, path, 100*time.Millisecond, func(offset time.Duration, rate float64, err error) {
		if err != nil {
			log.Error().Err(err).Msg("clock fault file not taken")
			return
		}
		if offset == 0 && rate == 1 {
			log.Warn().Msg("clock fault (--fault-clock): none, this worker's clock is right")
			return
		}
		log.Warn().Str("offset", offset.String()).Float64("rate", rate).Msg("clock fault (--fault-clock): this worker's clock is set off")
	})
}

// worker is a running worker's parts: open brings them up in order, serve
// runs them until the context ends, close takes down what open brought up,
// in reverse.
type worker struct {
	cfg Config
	log zerolog.Logger

	hup       <-chan os.Signal
	verifier  *auth.Verifier
	nc        *nats.Conn
	clientURL string
	js        jetstream.JetStream
	topo      topology.Handles
	reader    *jsread.Reader // reads stream PASSKEYS without a consumer
	keys      *trust.Local
	metrics   *metrics.Metrics
	parts     *runner.Set
	endpoints *service.Endpoints
	svc       micro.Service
	// storeWrites observes the store writes, and tells /readyz whether the
	// last commit failed.
	storeWrites *ops.StoreWrites
	// tracer records spans; nil when no tracing is set up.
	tracer trace.Tracer

	closers []func() // what close undoes, in the order it was done
}

// onClose has close undo something open did.
func (w *worker) onClose(f func()) { w.closers = append(w.closers, f) }

func (w *worker) close() {
	for i := len(w.closers) - 1; i >= 0; i-- {
		w.closers[i]()
	}
}

// open brings the worker's parts up: data directory, NATS, what JetStream
// holds, the trusted keys, the upgrade of a store from before partitions,
// the partitions' runner, HTTP and the endpoints. The partitions are taken
// in serve.
func (w *worker) open(ctx context.Context) error {
	unlock, err := prepareDataDir(w.cfg.DataDir, w.log)
	if err != nil {
		return err
	}
	w.onClose(unlock)
	// SIGHUP reloads the JWKS; in the development mode there is nothing to
	// reload, but it must not end the worker without its drain either.
	hup, stopHUP := notifyHUP()
	w.hup = hup
	w.onClose(stopHUP)
	for _, step := range []func(context.Context) error{w.openTracing, w.openNATS, w.openKeys} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	id, err := ownership.MemberID(w.cfg.DataDir)
	if err != nil {
		return err
	}
	w.log = w.log.With().Str("worker_id", id).Logger()
	if err := w.openPartitions(ctx, id); err != nil {
		return err
	}
	if w.cfg.HTTPListen != "" {
		h := &ops.Health{Conn: w.nc, Stream: w.topo.Stream, Partitions: w.parts, Writes: w.storeWrites}
		stopHTTP, err := ops.Serve(w.cfg.HTTPListen, w.metrics, h, w.cfg.DataDir, w.log)
		if err != nil {
			return err
		}
		w.onClose(stopHTTP)
	}
	return nil
}

// openTracing sets up the tracer, from Config.Tracing or the environment.
func (w *worker) openTracing(ctx context.Context) error {
	tp := w.cfg.Tracing
	if tp == nil {
		var shutdown func(context.Context) error
		var err error
		tp, shutdown, err = otlphttp.Provider(ctx, os.Getenv, "passkeys-worker", service.Version)
		if err != nil {
			return err
		}
		w.onClose(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := shutdown(ctx); err != nil {
				w.log.Warn().Err(err).Msg("flush traces")
			}
		})
	}
	if tp != nil {
		w.tracer = tp.Tracer("github.com/passkeys/worker")
		w.log.Info().Msg("tracing: spans are exported")
	}
	return nil
}

// openNATS connects (or starts the embedded server) and provisions (or finds) what the workers
// use in JetStream, waiting out what is transient (a cluster that is still
// forming, another worker creating them at the same moment).
func (w *worker) openNATS(ctx context.Context) error {
	cfg, log := &w.cfg, w.log
	nc, clientURL, shutdownServer, err := connect(cfg, log)
	if err != nil {
		return err
	}
	w.onClose(shutdownServer)
	w.onClose(nc.Close)
	w.nc, w.clientURL = nc, clientURL
	if w.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096)); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if cfg.CreateStream {
		w.topo, err = topology.Provision(ctx, w.js, cfg.Settings, log)
	} else {
		w.topo, err = topology.Find(ctx, w.js, cfg.Settings, log)
	}
	if err != nil {
		return err
	}
	allowDirect := w.topo.Stream.CachedInfo().Config.AllowDirect
	w.reader = jsread.New(w.js, topology.StreamName, allowDirect)
	if !allowDirect {
		log.Warn().Msg("stream PASSKEYS does not allow direct gets: catch-up reads one command per request; run `worker provision` again to allow them")
	}
	return nil
}

// openKeys reads the newest key set at start (trust.Local): the keys that
// judge each command are those in force at its place in the stream, set by
// the operator, not this worker's file.
func (w *worker) openKeys(ctx context.Context) error {
	keys, err := buildKeys(&w.cfg, w.log)
	if err != nil {
		return err
	}
	own, err := trust.NewEntry(keys, w.cfg.Issuer, w.cfg.Audience, auth.Rule(w.cfg.Verify))
	if err != nil {
		return err
	}
	if own.Rules = w.cfg.Rules; own.Rules < 0 || own.Rules > trust.RulesVersion {
		return fmt.Errorf("--rules %d: this version knows rules 1 to %d", own.Rules, trust.RulesVersion)
	}
	w.verifier = auth.NewVerifier()
	w.keys = &trust.Local{JS: w.js, Reader: w.reader, Stream: w.topo.Stream, Partitions: w.cfg.Partitions, Own: own, Writes: w.cfg.Embedded(), Log: w.log}
	if err := w.keys.Load(ctx); err != nil {
		return err
	}
	if w.cfg.StoreNoSync && w.keys.Rules() < 2 {
		// Under rules 1 a command may carry Nats-TTL and leave the stream
		// before its outcome: a store rebuilt from the stream would miss it.
		return fmt.Errorf("--store-nosync needs rules version 2 in force (the newest key set has rules %d): run `worker provision ... --rules 2` first", w.keys.Rules())
	}
	return nil
}

// openPartitions upgrades a data directory from before partitions, and
// joins the workers that share the partitions, with the endpoints that
// answer from them.
func (w *worker) openPartitions(ctx context.Context, id string) error {
	cfg, log := &w.cfg, w.log
	snapStream, err := w.js.Stream(ctx, topology.SnapshotStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", topology.SnapshotStream, err)
	}
	snaps := snapshot.New(w.topo.Snapshots, snapStream, log)
	err = upgrade.Run(ctx, upgrade.Config{DataDir: cfg.DataDir, Partitions: cfg.Partitions, Retention: cfg.Retention,
		StoreTimeout: cfg.StoreTimeout, DeleteConsumer: cfg.CreateStream, JS: w.js, Stream: w.topo.Stream,
		Reader: w.reader, Verifier: w.verifier, Snapshots: snaps, Log: log})
	if err != nil {
		return err
	}
	eventsJS, err := jetstream.New(w.nc, jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	w.metrics = metrics.New()
	answers := &service.AnswerStats{}
	// The endpoints answer the other workers' questions about the
	// partitions served here (ServeInternal), and ask the partitions
	// (Router, Replayer) once they exist.
	w.endpoints = &service.Endpoints{JS: w.js, Reader: w.reader, Conn: w.nc, Verifier: w.verifier, Log: log,
		Keys: w.keys.KeySet, Now: w.keys.Now, Fresh: w.keys.Fresh, OutcomeWait: cfg.OutcomeWait, Answers: answers, Tracer: w.tracer}
	w.parts, err = runner.New(runner.Config{ID: id, Settings: cfg.Settings, Options: cfg.Options, DataDir: cfg.DataDir,
		LegacyUntil: topology.LegacyUntil(w.topo.Stream.CachedInfo().Config), NoEarlyAnswers: cfg.without(MechEarlyAnswers),
		Leases: w.topo.Leases, BucketTTL: w.topo.LeaseTTL, Conn: w.nc,
		Stream: w.topo.Stream, Reader: w.reader, EventsJS: eventsJS, EventsRead: jsread.New(w.js, topology.EventsStreamName, false),
		Verifier: w.verifier, Snapshots: snaps, Metrics: w.metrics,
		Observer: w.observer(answers), Tracer: w.tracer, Log: log,
		ServeInternal: w.endpoints.ServeInternal})
	if err != nil {
		return err
	}
	w.endpoints.Router, w.endpoints.Replayer = w.parts, w.parts.Replay
	if err := w.parts.Join(ctx); err != nil {
		return err
	}
	w.parts.RegisterGauges(w.metrics)
	w.registerGauges()
	return nil
}

// observer tells the metrics, the micro service's STATS (answers) and
// /readyz (writes) what the partitions' processors do.
func (w *worker) observer(answers *service.AnswerStats) handler.Observer {
	m, writes := w.metrics, w.storeWrites
	return handler.Observer{
		Batch: func(n int, took time.Duration, err error) { m.Batch(n, took, err); writes.Batch(n, took, err) },
		Answered: func(op passkey.Op, code passkey.Code, text string, at time.Time) {
			m.Answered(op, code, text, at)
			answers.Answered(op, code, text, at)
		},
		Redelivered: m.Redelivered, EventWritten: m.EventWritten, AnsweredEarly: m.AnsweredEarly,
	}
}

// registerGauges adds the gauges of the worker's other parts, read at
// scrape time.
func (w *worker) registerGauges() {
	m := w.metrics
	m.Gauge("passkeys_tokens_cached", "Verified tokens in the signature cache.", func() float64 {
		return float64(w.verifier.CachedTokens())
	})
	m.Gauge("passkeys_jwks_file_differs", "1 while this worker's --jwks file differs from the newest key set, which every worker judges by.", func() float64 {
		if w.keys.Differs() {
			return 1
		}
		return 0
	})
	m.Gauge("passkeys_key_set_seq", "Stream sequence of the newest control entry (key set) this worker has read.", func() float64 {
		return float64(w.keys.Seq())
	})
}

// startWait bounds how long a starting worker waits for its first
// partitions to be served before it answers requests anyway.
const startWait = time.Minute

// serve takes and serves partitions, prunes expired outcomes and watches
// the JWKS until ctx ends, then stops in order: no new requests, each
// partition finishes what it has in hand and writes its snapshot, the
// membership is left.
func (w *worker) serve(ctx context.Context) error {
	log := w.log
	ctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	parted := make(chan struct{})
	var runErr error
	go func() {
		defer close(parted)
		if runErr = w.parts.Run(ctx); runErr != nil {
			stopAll() // another process serves as this worker: stop
		}
	}()
	// The first partitions this worker is given are served before it
	// answers requests (a lone worker: all of them), so that its first
	// answers do not wait for its own start.
	w.parts.AwaitFirstRound(ctx, startWait)
	var err error
	if w.svc, err = w.endpoints.Start(w.nc); err != nil {
		stopAll()
		<-parted
		return fmt.Errorf("start micro service: %w", err)
	}
	pruned := make(chan struct{})
	go func() { defer close(pruned); w.parts.PruneOutcomes(ctx) }()
	w.watchKeys(ctx)
	log.Info().Str("nats_url", natsconn.RedactURL(w.clientURL)).Str("data_dir", w.cfg.DataDir).
		Str("stream", topology.StreamName).Int("partitions", w.cfg.Partitions).Msg("worker started")
	if w.cfg.Started != nil {
		w.cfg.Started(w.clientURL)
	}
	<-ctx.Done()
	log.Info().Msg("stopping: no new requests or commands")
	if err := w.svc.Stop(); err != nil {
		log.Warn().Err(err).Msg("stop micro service")
	}
	<-parted
	log.Debug().Msg("partitions let go of")
	w.flush()
	<-pruned
	log.Info().Msg("stopped")
	return runErr
}

// watchKeys reloads the --jwks file on SIGHUP and when it changes, until
// ctx ends; in the development mode it only answers SIGHUP.
func (w *worker) watchKeys(ctx context.Context) {
	if w.cfg.DevMode() {
		go ignoreHUP(ctx, w.hup, w.log)
		go w.keys.Run(ctx, "", 0, nil)
		return
	}
	interval := w.cfg.JWKSReload
	if interval <= 0 {
		interval = 10 * time.Second
	}
	go w.keys.Run(ctx, w.cfg.JWKS, interval, w.hup)
}

// flush waits for the forwarded requests' acknowledgements and sends the
// replies still buffered, each for a bounded time.
func (w *worker) flush() {
	select {
	case <-w.js.PublishAsyncComplete():
	case <-time.After(5 * time.Second):
		w.log.Warn().Int("pending", w.js.PublishAsyncPending()).Msg("forwarded requests still unacknowledged at shutdown")
	}
	if !w.nc.IsConnected() {
		w.log.Warn().Msg("stopping while disconnected from NATS: replies still buffered are lost; their commands were committed and repeat their outcome")
		return
	}
	if err := w.nc.FlushTimeout(5 * time.Second); err != nil {
		w.log.Warn().Err(err).Msg("flush")
	}
}
