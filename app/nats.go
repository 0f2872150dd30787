package app

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/natsconn"
)

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
		// A frozen server (stopped, not closed) keeps the socket open: without
		// pings the client would wait the default four minutes to notice.
		nats.PingInterval(5 * time.Second), nats.MaxPingsOutstanding(2),
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
	// Without a configuration, every write is fsynced before it is
	// acknowledged, as the shipped nats.conf says: a power loss then loses
	// no command the stream acknowledged. A configuration decides for itself.
	opts := &server.Options{SyncAlways: true}
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
