package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/passkeys/worker/handler"
	"github.com/passkeys/worker/storage"
)

// Command is the worker's command line: it parses args (flags, each also
// settable by its environment variable), then runs the worker until ctx
// ends. cmd/worker is this and signal handling; tests and the publisher's
// benchmark start a worker through it too.
func Command(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "backup" {
		return backupCommand(args[1:], getenv, stdout, stderr)
	}
	var cfg Config
	var logLevel string
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.NATSURL, "nats-url", "", "NATS server URL(s), comma-separated; empty starts an embedded NATS server with JetStream")
	fs.StringVar(&cfg.NATSCreds, "nats-creds", "", "NATS credentials file")
	fs.StringVar(&cfg.InboxPrefix, "inbox-prefix", "", "prefix of the worker's inboxes, where its consumer's deliveries and API replies arrive (default: _INBOX_<user> when --nats-url names a user, else _INBOX)")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:4222", "client address of the embedded NATS server (port 0: any free port)")
	fs.StringVar(&cfg.DataDir, "data-dir", "./data", "directory of the bbolt file and the embedded server's JetStream store")
	fs.StringVar(&cfg.JWKS, "jwks", "", "JSON Web Key Set file that signs the callers' tokens")
	fs.StringVar(&cfg.Issuer, "issuer", "", "required iss of every token")
	fs.StringVar(&cfg.Audience, "audience", "", "required member of every token's aud")
	fs.StringVar(&cfg.NATSConfig, "nats-config", "", "nats-server configuration file for the embedded server (default: ./nats.conf when it exists)")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&cfg.Retention, "outcome-retention", handler.DefaultRetention, "how long outcomes are kept for repeats; also the stream's max age")
	fs.DurationVar(&cfg.DuplicateWindow, "duplicate-window", 2*time.Minute, "JetStream's duplicate window for Nats-Msg-Id")
	fs.IntVar(&cfg.MaxBatch, "max-batch", 1024, "most commands applied in one store transaction")
	fs.BoolVar(&cfg.CreateStream, "create-stream", true, "create or update stream PASSKEYS and consumer passkeys-worker at start-up")
	fs.DurationVar(&cfg.OutcomeWait, "outcome-wait", 10*time.Second, "how long a repeated request waits for the original's outcome")
	fs.DurationVar(&cfg.StoreTimeout, "store-lock-timeout", storage.DefaultTimeout, "how long to wait for another process's lock on the data file")
	fs.BoolVar(&cfg.AllowStoreGap, "allow-store-gap", false, "start even when a store restored from an old backup misses commands the stream no longer holds")
	fs.StringVar(&cfg.HTTPListen, "http-listen", "", "address for Prometheus /metrics, /healthz and /readyz (empty: none)")
	fs.DurationVar(&cfg.JWKSReload, "jwks-reload-interval", 10*time.Second, "how often the JWKS file is checked for changes (it is also reloaded on SIGHUP)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: worker [flags]\n       worker backup --out FILE [--from HOST:PORT | --data-dir DIR]\n\nRemoves passkeys: consumes commands from JetStream stream PASSKEYS and serves\nthe passkeys micro service. With neither --nats-url nor --jwks it runs fully\nembedded with a development signing key (never for production).\n\nFlags (each also read from the environment variable shown):\n")
		fs.VisitAll(func(f *flag.Flag) {
			fmt.Fprintf(stderr, "  --%s (%s)\n    \t%s (default %q)\n", f.Name, envName(f.Name), f.Usage, f.DefValue)
		})
	}
	// The environment sets a flag unless the command line does.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if v := getenv(envName(f.Name)); v != "" && envErr == nil {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("%s=%q: %w", envName(f.Name), v, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil // --help asked for the usage text, and got it
	} else if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	if cfg.NATSConfig == "" && cfg.Embedded() {
		if _, err := os.Stat("nats.conf"); err == nil {
			cfg.NATSConfig = "nats.conf"
		}
	}
	level, err := zerolog.ParseLevel(logLevel)
	if err != nil || level == zerolog.NoLevel {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
	}
	log := zerolog.New(stderr).Level(level).With().Timestamp().Str("service", "passkeys-worker").Logger()
	return Run(ctx, cfg, log)
}

// envName is the environment variable of a flag: PASSKEYS_ and the flag's
// name in upper case with '_' for '-'.
func envName(flagName string) string {
	return "PASSKEYS_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}
