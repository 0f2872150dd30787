// Package app assembles the worker: store, NATS (embedded or remote),
// stream and consumer, the micro service and the consumer loop. cmd/worker
// turns flags into a Config; the publisher's benchmark runs the same thing.
package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/internal/natsconn"
	"github.com/passkeys/worker/keyhistory"
	"github.com/passkeys/worker/metrics"
	"github.com/passkeys/worker/ownership"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/snapshot"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
)

// StoreFile is the bbolt file's name inside the data directory.
const StoreFile = "passkeys.db"

// Config is everything the worker is told.
type Config struct {
	NATSURL   string
	NATSCreds string
	// InboxPrefix is where the worker's connection receives its
	// consumer's deliveries and its API replies; "" for InboxPrefix's default.
	InboxPrefix string
	Listen      string
	DataDir     string
	JWKS        string
	Issuer      string
	Audience    string
	NATSConfig  string // a nats-server configuration file for the embedded server; "" for none

	Retention       time.Duration
	DuplicateWindow time.Duration
	// EventsRetention is how long stream PASSKEYS_EVENTS keeps an event;
	// EventsDuplicates its duplicate window: how late a second publication
	// of an event is still dropped. Zero: DefaultEventsRetention and
	// DefaultEventsDuplicates.
	EventsRetention  time.Duration
	EventsDuplicates time.Duration
	MaxBatch         int
	// Partitions is the number of partitions (fixed when stream PASSKEYS
	// is created); Replicas the JetStream replicas of what the worker
	// creates.
	Partitions int
	Replicas   int
	// SnapshotInterval is how often a partition's snapshot is written;
	// zero for snapshotInterval.
	SnapshotInterval time.Duration
	// ProvisionWait bounds how long `worker provision` waits for a
	// JetStream that is not ready yet.
	ProvisionWait time.Duration
	CreateStream  bool
	OutcomeWait   time.Duration
	StoreTimeout  time.Duration
	JWKSReload    time.Duration // how often the JWKS file is checked for changes
	HTTPListen    string        // address of /metrics, /healthz, /readyz, /backup; "" for none
	AllowStoreGap bool          // start even when a restored store misses commands the stream no longer holds
	NoSync        bool          // benchmarks of the layers above the disk only
	HoldEvents    bool          // tests only: publish no event (PASSKEYS_TEST_HOLD_EVENTS=1)

	// Started, when set, is called once the worker serves, with the URL
	// clients reach NATS at.
	Started func(natsURL string)
}

// Embedded reports whether the worker runs its own NATS server.
func (c *Config) Embedded() bool { return c.NATSURL == "" }

// DevMode reports whether the worker trusts the development key.
func (c *Config) DevMode() bool { return c.NATSURL == "" && c.JWKS == "" }

// Defaults of the events stream.
const (
	DefaultEventsRetention  = 365 * 24 * time.Hour
	DefaultEventsDuplicates = 24 * time.Hour
)

// Settings are the configuration's settings of what the workers use in
// JetStream.
func (c *Config) Settings() topology.Settings {
	return topology.Settings{Retention: c.Retention, DuplicateWindow: c.DuplicateWindow, EventsRetention: c.EventsRetention,
		EventsDuplicates: c.EventsDuplicates, Partitions: c.Partitions, Replicas: c.Replicas}
}

// setUp creates or updates the streams, consumers and buckets (or, with
// --create-stream=false, finds those an operator provisioned), waiting out
// what is transient (a cluster that is still forming, another worker
// creating them at the same moment) until ctx ends.
func (w *worker) setUp(ctx context.Context) (topology.Handles, error) {
	if w.cfg.CreateStream {
		return topology.Provision(ctx, w.js, w.cfg.Settings(), w.log)
	}
	return topology.Find(ctx, w.js, w.cfg.Settings(), w.log)
}

// Validate checks the configuration and fills in development defaults.
func (c *Config) Validate() error {
	if c.Partitions == 0 {
		c.Partitions = partition.DefaultCount
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.EventsRetention == 0 {
		c.EventsRetention = DefaultEventsRetention
	}
	if c.EventsDuplicates == 0 {
		c.EventsDuplicates = DefaultEventsDuplicates
	}
	if c.DevMode() {
		if c.Issuer == "" {
			c.Issuer = auth.DevIssuer
		}
		if c.Audience == "" {
			c.Audience = auth.DevAudience
		}
	}
	var missing []string
	for _, f := range []struct{ name, val string }{{"--jwks", c.JWKS}, {"--issuer", c.Issuer}, {"--audience", c.Audience}} {
		if f.val == "" && !c.DevMode() {
			missing = append(missing, f.name)
		}
	}
	switch {
	case len(missing) > 0 && !c.Embedded():
		return fmt.Errorf("with --nats-url set, %v must be set too (the development key is only for the fully embedded default)", missing)
	case len(missing) > 0:
		return fmt.Errorf("with --jwks set, %v must be set too", missing)
	case c.DataDir == "":
		return errors.New("--data-dir must not be empty")
	case c.MaxBatch < 1:
		return errors.New("--max-batch must be at least 1")
	}
	if err := c.Settings().Validate(); err != nil {
		return err
	}
	if c.Embedded() {
		host, _, err := listenAddr(c.Listen)
		if err != nil {
			return err
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("--listen %s: the embedded NATS server has no users, so it listens on loopback only; "+
				"for anything else run nats-server -c nats.conf and give the worker --nats-url", c.Listen)
		}
	}
	return nil
}

// Run runs the worker until ctx ends, then shuts down in order: stop taking
// requests and commands, finish those in hand, flush, close.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	w := &worker{cfg: cfg, log: log}
	defer w.close()
	if err := w.open(ctx); err != nil {
		return err
	}
	return w.serve(ctx)
}

// worker is a running worker's parts (WTF Dial's Main): open brings them up
// in order, serve runs them until the context ends, close takes down what
// open brought up, in reverse.
type worker struct {
	cfg Config
	log zerolog.Logger

	hup       <-chan os.Signal
	verifier  *auth.Verifier
	nc        *nats.Conn
	clientURL string
	js        jetstream.JetStream
	eventsJS  jetstream.JetStream
	stream    jetstream.Stream
	reader    *jsread.Reader // reads stream PASSKEYS without a consumer
	replies   *handler.ReplyGuard
	parts     *partitionSet
	snaps     *snapshot.Store
	keys      *trustedKeys
	metrics   *metrics.Metrics
	writes    *storeWrites
	answers   *handler.AnswerStats
	service   *handler.Service
	svc       micro.Service

	closers []func() // what close undoes, in the order it was done
}

// onClose has close undo something open did.
func (w *worker) onClose(f func()) { w.closers = append(w.closers, f) }

func (w *worker) close() {
	for i := len(w.closers) - 1; i >= 0; i-- {
		w.closers[i]()
	}
}

// open brings the worker's parts up: data directory, keys, NATS, streams,
// consumers and buckets, the migration of a store from before partitions,
// metrics and health, and the micro service. The partitions are taken in
// serve.
func (w *worker) open(ctx context.Context) error {
	cfg, log := &w.cfg, w.log
	unlock, err := prepareDataDir(cfg.DataDir, log)
	if err != nil {
		return err
	}
	w.onClose(unlock)
	keys, err := buildKeys(cfg, log)
	if err != nil {
		return err
	}
	if w.verifier, err = auth.NewVerifier(keys, cfg.Issuer, cfg.Audience); err != nil {
		return err
	}
	// SIGHUP reloads the JWKS; in the development mode there is nothing to
	// reload, but it must not end the worker without its drain either.
	hup, stopHUP := notifyHUP()
	w.hup = hup
	w.onClose(stopHUP)
	nc, clientURL, shutdownServer, err := connect(cfg, log)
	if err != nil {
		return err
	}
	w.onClose(shutdownServer)
	w.onClose(nc.Close)
	w.nc, w.clientURL = nc, clientURL
	var serverGone func() time.Time
	if !cfg.Embedded() {
		watch, err := natsconn.WatchServers(cfg.NATSURL, func(server string) {
			log.Warn().Str("server", server).Msg("a NATS server went away: the commands whose replies went out around then are answered again")
		}, connectOptions(cfg, log)...)
		if err != nil {
			return fmt.Errorf("connect to NATS at %s: %w", natsconn.RedactURL(cfg.NATSURL), err)
		}
		w.onClose(watch.Close)
		serverGone = watch.LastGone
	}
	if w.replies, err = handler.NewReplyGuard(nc, serverGone, log); err != nil {
		return err
	}
	w.onClose(w.replies.Close)
	if w.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096)); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if w.eventsJS, err = jetstream.New(nc, jetstream.WithPublishAsyncTimeout(5*time.Second)); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	set, err := w.setUp(ctx)
	if err != nil {
		return err
	}
	w.stream = set.Stream
	w.reader = jsread.New(w.js, topology.StreamName, set.Stream.CachedInfo().Config.AllowDirect)
	if !set.Stream.CachedInfo().Config.AllowDirect {
		log.Warn().Msg("stream PASSKEYS does not allow direct gets: catch-up reads one command per request; run `worker provision` again to allow them")
	}
	// The keys that judge each command come from the shared history, in
	// force from when the NATS server stored them, not from this worker's
	// file.
	history := keyhistory.Open(w.js, set.Keys, w.verifier, log)
	w.keys = &trustedKeys{history: history, own: keyhistory.Entry{Issuer: cfg.Issuer, Audience: cfg.Audience, Keys: keys},
		writes: cfg.Embedded(), log: log}
	if err := w.keys.load(ctx); err != nil {
		return err
	}
	id, err := workerID(cfg.DataDir)
	if err != nil {
		return err
	}
	log = log.With().Str("worker_id", id).Logger()
	w.snaps = snapshot.New(set.Snapshots, log)
	if err := w.migrateLegacy(ctx); err != nil {
		return err
	}
	// Metrics and health first: once the service answers, they do too.
	w.metrics, w.writes, w.answers = metrics.New(), &storeWrites{}, &handler.AnswerStats{}
	w.parts = &partitionSet{n: cfg.Partitions, dataDir: cfg.DataDir, cfg: cfg, legacyUntil: topology.LegacyUntil(set.Stream.CachedInfo().Config),
		nc: nc, stream: set.Stream, reader: w.reader, eventsJS: w.eventsJS, eventsRead: jsread.New(w.js, topology.EventsStreamName, false), verifier: w.verifier, keys: history, snaps: w.snaps,
		metrics: w.metrics, observer: handler.Observers{w.metrics, w.answers, w.writes}, replies: w.replies, log: log,
		held: map[int]*part{}, unrecoverable: map[int]error{}}
	w.parts.coord = ownership.New(set.Leases, ownership.Config{ID: id, Partitions: cfg.Partitions}, w.parts.run, log)
	if err := w.parts.coord.Join(ctx); err != nil {
		return err
	}
	registerGauges(w.metrics, w.parts, w.verifier, w.keys, w.replies)
	if cfg.HTTPListen != "" {
		h := &health{nc: nc, stream: w.stream, parts: w.parts, writes: w.writes}
		stopHTTP, err := serveHTTP(ctx, cfg.HTTPListen, w.metrics, h, cfg.DataDir, log)
		if err != nil {
			return err
		}
		w.onClose(stopHTTP)
	}
	w.service = &handler.Service{
		JS: w.js, Reader: w.reader, Conn: nc, Partitions: w.parts, Verifier: w.verifier, Log: log, Now: history.Now, OutcomeWait: cfg.OutcomeWait,
		Answers: w.answers, Replayer: w.replay,
	}
	w.parts.service = w.service
	return nil
}

// startWait bounds how long a starting worker waits for its first
// partitions to be served before it answers requests anyway.
const startWait = time.Minute

// snapshotEvery is the partitions' snapshot interval.
func (c *Config) snapshotEvery() time.Duration {
	if c.SnapshotInterval > 0 {
		return c.SnapshotInterval
	}
	return snapshotInterval
}

// replay serves passkeys.admin.replay for the partitions this worker
// serves: only what each has applied; the rest its consumer applies itself.
func (w *worker) replay(ctx context.Context, r command.ReplayRange) (command.ReplayReport, error) {
	total := command.ReplayReport{FromSeq: r.FromSeq, ToSeq: r.ToSeq}
	var maxApplied uint64
	for _, pt := range w.parts.served() {
		var applied uint64
		if err := pt.store.View(func(tx *storage.Tx) error { applied = tx.AppliedSeq(); return nil }); err != nil {
			return total, err
		}
		pr := r
		pr.ToSeq = min(r.ToSeq, applied)
		if pr.ToSeq < pr.FromSeq {
			continue
		}
		rep, err := handler.Replay(ctx, w.reader, pt.applier, partition.Filter(pt.p), pr, w.cfg.MaxBatch, w.log, nil)
		if err != nil {
			return total, err
		}
		total.Add(rep)
		maxApplied = max(maxApplied, applied)
	}
	total.ToSeq = min(r.ToSeq, maxApplied)
	total.Partitions = w.parts.Held()
	return total, nil
}

// serve takes and serves partitions, prunes expired outcomes and watches
// the JWKS until ctx ends, then stops in order: no new requests, each
// partition finishes what it has in hand and writes its snapshot, the
// membership is left.
func (w *worker) serve(ctx context.Context) error {
	log := w.log
	ctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	// Read the key history every second, so that commands rarely wait
	// for it (command.Applier.Keys).
	go w.keys.history.Run(ctx)
	parted := make(chan struct{})
	var runErr error
	go func() {
		defer close(parted)
		if runErr = w.parts.coord.Run(ctx); runErr != nil {
			stopAll() // another process serves as this worker: stop
		}
	}()
	// The first partitions this worker is given are served before it
	// answers requests (a lone worker: all of them), so that its first
	// answers do not wait for its own start.
	w.parts.awaitFirstRound(ctx, startWait)
	var err error
	if w.svc, err = w.service.Start(w.nc); err != nil {
		stopAll()
		<-parted
		return fmt.Errorf("start micro service: %w", err)
	}
	pruned := make(chan struct{})
	go func() { defer close(pruned); pruneOutcomes(ctx, w.parts, w.stream, log) }()
	if !w.cfg.DevMode() {
		interval := w.cfg.JWKSReload
		if interval <= 0 {
			interval = 10 * time.Second
		}
		go w.keys.watch(ctx, w.cfg.JWKS, interval, w.hup)
	} else {
		go ignoreHUP(ctx, w.hup, log)
	}
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

// buildKeys is the key set this worker is given: its --jwks file, or the
// development key.
func buildKeys(cfg *Config, log zerolog.Logger) (jose.JSONWebKeySet, error) {
	var keys jose.JSONWebKeySet
	if cfg.DevMode() {
		key, created, err := auth.LoadOrCreateDevKey(cfg.DataDir)
		if err != nil {
			return keys, fmt.Errorf("development key: %w", err)
		}
		log.Warn().Bool("created", created).Str("key_file", filepath.Join(cfg.DataDir, auth.DevKeyFile)).
			Str("issuer", cfg.Issuer).Str("audience", cfg.Audience).
			Msg("DEVELOPMENT MODE: trusting a local development signing key; anyone who can read the data directory can mint tokens. Never run this way in production: set --nats-url and --jwks")
		keys = auth.PublicSet(key)
	} else {
		var err error
		if keys, err = auth.LoadJWKS(cfg.JWKS); err != nil {
			return keys, err
		}
	}
	return keys, nil
}

// prepareDataDir creates the data directory private to this user, warns
// when an existing one is open to others, and locks it for this process:
// two workers on one data directory would be one member twice.
func prepareDataDir(dir string, log zerolog.Logger) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	info, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if info.Mode().Perm()&0o077 != 0 {
		log.Warn().Str("data_dir", dir).Str("mode", info.Mode().Perm().String()).
			Msg("the data directory is readable by other users; it should be 0700")
	}
	return lockDataDir(dir)
}

// connect connects to the configured NATS, or starts the embedded server and
// connects in-process. It returns the URL clients reach NATS at and a
// function that shuts the embedded server down.
func connect(cfg *Config, log zerolog.Logger) (*nats.Conn, string, func(), error) {
	opts := connectOptions(cfg, log)
	if !cfg.Embedded() {
		nc, err := nats.Connect(cfg.NATSURL, opts...)
		if err != nil {
			return nil, "", nil, fmt.Errorf("connect to NATS at %s: %w", natsconn.RedactURL(cfg.NATSURL), err)
		}
		return nc, cfg.NATSURL, func() {}, nil
	}
	ns, err := startEmbedded(cfg, log)
	if err != nil {
		return nil, "", nil, err
	}
	shutdown := func() { ns.Shutdown(); ns.WaitForShutdown() }
	nc, err := nats.Connect("", append(opts, nats.InProcessServer(ns))...)
	if err != nil {
		shutdown()
		return nil, "", nil, fmt.Errorf("connect to embedded NATS: %w", err)
	}
	return nc, ns.ClientURL(), shutdown, nil
}

// connectOptions are the options of the worker's connections to NATS.
func connectOptions(cfg *Config, log zerolog.Logger) []nats.Option {
	opts := []nats.Option{
		nats.Name("passkeys-worker"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close
				log.Warn().Err(err).Msg("disconnected from NATS")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("nats_url", nc.ConnectedUrlRedacted()).Msg("reconnected to NATS")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Error().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("NATS error")
		}),
	}
	if cfg.NATSCreds != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATSCreds))
	}
	if !cfg.Embedded() {
		if prefix := natsconn.InboxPrefix(cfg.InboxPrefix, cfg.NATSURL, cfg.NATSCreds); prefix != "" {
			opts = append(opts, nats.CustomInboxPrefix(prefix))
		}
	}
	return opts
}

func startEmbedded(cfg *Config, log zerolog.Logger) (*server.Server, error) {
	opts := &server.Options{}
	if cfg.NATSConfig != "" {
		var err error
		if opts, err = loadEmbeddedConfig(cfg.NATSConfig); err != nil {
			return nil, err
		}
	}
	host, port, _ := listenAddr(cfg.Listen)
	opts.Host, opts.Port = host, port
	if port != server.RANDOM_PORT {
		// The server only reports a busy port by never becoming ready;
		// asking first gives the operator the reason at once.
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return nil, fmt.Errorf("embedded NATS cannot listen on %s: %w", cfg.Listen, err)
		}
		l.Close()
	}
	opts.JetStream = true
	opts.StoreDir = filepath.Join(cfg.DataDir, "jetstream")
	opts.NoSigs = true
	opts.NoLog = true
	opts.ServerName = "passkeys-embedded"
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not start listening on %s within 10s", cfg.Listen)
	}
	log.Info().Str("client_url", ns.ClientURL()).Str("store_dir", opts.StoreDir).Msg("embedded NATS server with JetStream started")
	ev := log.Warn().Str("client_url", ns.ClientURL())
	if cfg.JWKS != "" {
		ev = ev.Str("jwks", cfg.JWKS)
	}
	ev.Msg("EMBEDDED NATS SERVER WITHOUT USERS: any process on this machine can connect, read every caller's bearer token " +
		"from stream PASSKEYS, and purge it. For one machine's development only; in production run nats-server -c nats.conf " +
		"and give the worker --nats-url")
	return ns, nil
}

// passwordVars are the variables nats.conf takes its users' passwords from.
var passwordVars = []string{"PASSKEYS_WORKER_NATS_PASSWORD", "PASSKEYS_SERVICE_NATS_PASSWORD", "PASSKEYS_ADMIN_NATS_PASSWORD",
	"PASSKEYS_PROVISIONER_NATS_PASSWORD"}

// loadEmbeddedConfig reads a nats-server configuration for the embedded
// server: its limits and JetStream settings apply, its users do not (the
// embedded server listens on loopback only, and the worker connects to it
// in-process). Password variables the environment does not set get a
// throwaway value for the parse alone, defined in front of the file's text
// (a definition in the file wins over the environment), since their users
// are dropped anyway; the process's environment is left alone.
func loadEmbeddedConfig(path string) (*server.Options, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("NATS configuration: %w", err)
	}
	var defs strings.Builder
	for _, v := range passwordVars {
		if _, ok := os.LookupEnv(v); !ok {
			fmt.Fprintf(&defs, "%s: \"unused-by-the-embedded-server\"\n", v)
		}
	}
	opts := &server.Options{}
	if err := opts.ProcessConfigString(defs.String() + string(raw)); err != nil {
		// Warnings alone (a field the embedded server does not use) are not a failure.
		if cerr, ok := err.(interface{ Errors() []error }); !ok || len(cerr.Errors()) > 0 {
			return nil, fmt.Errorf("NATS configuration %s: %w", path, err)
		}
	}
	opts.Users, opts.Nkeys, opts.Username, opts.Password, opts.Authorization, opts.NoAuthUser = nil, nil, "", "", "", ""
	return opts, nil
}

// listenAddr splits host:port; port 0 asks for a random free port.
func listenAddr(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, fmt.Errorf("--listen %q: %w", s, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("--listen %q: bad port", s)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// pruneInterval is how often expired outcome records are pruned. A pass
// reads the whole store (storage.PruneOutcomes); against a retention of
// days, an hour's delay is nothing.
const pruneInterval = time.Hour

// pruneMargin is how far behind the command stream's clock pruning
// stays.
const pruneMargin = time.Hour

// pruneOutcomes deletes expired outcome records of the partitions held,
// every pruneInterval, in small transactions so the consumers are never
// held up for long. "Expired" is by the command stream's clock (its
// leader's, STREAM.INFO), less pruneMargin, never this worker's: a record
// is pruned only when it expired so long ago that no command that could
// still look for it exists. A repeat stored since has a later timestamp,
// and a record expired as of a command's own timestamp is ignored by that
// command whether or not it was pruned yet; the original command is past
// the stream's MaxAge (the same retention) by more than the margin, so the
// stream no longer holds it to deliver it again. So pruning changes no
// answer, whatever the clocks.
func pruneOutcomes(ctx context.Context, parts *partitionSet, stream jetstream.Stream, log zerolog.Logger) {
	const chunk = 5000
	tick := time.NewTicker(pruneInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := stream.Info(ictx)
		cancel()
		if err != nil || info.TimeStamp.IsZero() {
			log.Warn().Err(err).Msg("outcome records not pruned: the command stream's clock could not be read")
			continue
		}
		until := info.TimeStamp.Add(-pruneMargin)
		for _, pt := range parts.served() {
			start := time.Now()
			n, err := pt.store.PruneOutcomes(until, chunk)
			if err != nil {
				log.Error().Err(err).Int("partition", pt.p).Int("pruned", n).Msg("prune outcome records")
			} else if n > 0 {
				log.Info().Int("partition", pt.p).Int("pruned", n).Dur("took", time.Since(start)).Msg("expired outcome records pruned")
			}
		}
	}
}
