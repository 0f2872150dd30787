package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/backup"
	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/cli"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/runner"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
	"github.com/passkeys/worker/trust"
)

// Main is the worker's command line: it parses args (flags, each also
// settable by its environment variable), then runs the worker until ctx
// ends. cmd/worker is this and signal handling; tests and the publisher's
// benchmark start a worker through it too.
func Main(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "backup" {
		return backup.Command(args[1:], getenv, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "provision" {
		return provisionCommand(ctx, args[1:], getenv, stdout, stderr)
	}
	var cfg Config
	var logLevel, logFormat string
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	workerFlags(fs, &cfg, &logLevel, &logFormat)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: worker [flags]\n       worker backup --out DIR [--from HOST:PORT | --data-dir DIR]\n       worker provision --nats-url URL [--outcome-retention D] [--duplicate-window D] [--partitions N] [--replicas R]\n\nRemoves passkeys: consumes commands from JetStream stream PASSKEYS and serves\nthe passkeys micro service. With neither --nats-url nor --jwks it runs fully\nembedded with a development signing key (never for production).\n\nFlags (each also read from the environment variable shown):\n")
		fs.VisitAll(func(f *flag.Flag) {
			fmt.Fprintf(stderr, "  --%s (%s)\n    \t%s (default %q)\n", f.Name, cli.EnvName(f.Name), f.Usage, f.DefValue)
		})
	}
	if done, err := cli.ParseFlags(fs, args, getenv); done || err != nil {
		return err
	}
	// Config.Validate fills a zero count in for callers that build a
	// Config; on the command line 0 is a mistake.
	if err := partition.ValidateCount(cfg.Partitions); err != nil {
		return err
	}
	if cfg.Replicas < 1 {
		return fmt.Errorf("--replicas must be between 1 and 5, not %d", cfg.Replicas)
	}
	if cfg.NATSConfig == "" && cfg.Embedded() {
		if _, err := os.Stat("nats.conf"); err == nil {
			cfg.NATSConfig = "nats.conf"
		}
	}
	log, err := NewLogger(stderr, logFormat, logLevel, "passkeys-worker")
	if err != nil {
		return err
	}
	if cfg.FaultClock != "" {
		log.Warn().Str("file", cfg.FaultClock).Msg("this worker's clock follows a fault file (--fault-clock), for a fault campaign: not for production")
	}
	if len(cfg.Without) > 0 {
		log.Warn().Strs("without", cfg.Without).Msg("mechanisms switched off (--without), for a fault campaign's measure: not for production")
	}
	return Run(ctx, cfg, log)
}

// workerFlags adds the worker's flags.
func workerFlags(fs *flag.FlagSet, cfg *Config, logLevel, logFormat *string) {
	natsFlags(fs, cfg, "comma-separated; empty starts an embedded NATS server with JetStream")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:4222", "client address of the embedded NATS server (port 0: any free port)")
	fs.StringVar(&cfg.DataDir, "data-dir", "./data", "directory of the bbolt file and the embedded server's JetStream store")
	fs.StringVar(&cfg.JWKS, "jwks", "", "JSON Web Key Set file that signs the callers' tokens")
	fs.StringVar(&cfg.Issuer, "issuer", "", "required iss of every token")
	fs.StringVar(&cfg.Audience, "audience", "", "required member of every token's aud")
	fs.StringVar(&cfg.Verify, "verify", "", "the rule EdDSA signatures are checked by, where this worker writes its own key set (the embedded default): \"\" (RFC 8032, one by one) or \"zip215\" (checked in batches)")
	fs.IntVar(&cfg.Rules, "rules", 0, "the rules version of this worker's own key set, where it writes it (the embedded default), as worker provision --rules")
	fs.StringVar(&cfg.NATSConfig, "nats-config", "", "nats-server configuration file for the embedded server (default: ./nats.conf when it exists)")
	fs.StringVar(logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(logFormat, "log-format", LogAuto, "log lines: json, console (for a person), or auto (console on a terminal, json otherwise)")
	settingsFlags(fs, cfg, "how long outcomes are kept for repeats; also the stream's max age")
	fs.DurationVar(&cfg.SnapshotInterval, "snapshot-interval", runner.DefaultSnapshotInterval, "a changed partition's state is written to object store "+topology.SnapshotBucket+" at least this often")
	fs.IntVar(&cfg.SnapshotChanges, "snapshot-changes", runner.DefaultSnapshotChanges, "... and as soon as it has applied this many commands since its last snapshot")
	fs.IntVar(&cfg.MaxBatch, "max-batch", 1024, "most commands applied in one store transaction")
	fs.BoolVar(&cfg.StoreNoSync, "store-nosync", false, "commit to the partitions' stores without fsync: the stream (which must fsync: sync_interval: always) and the snapshots keep what was confirmed, and a store not closed cleanly is rebuilt from them at start; only once rules version 2 is in force (worker provision --rules 2): docs/operations.md")
	fs.BoolVar(&cfg.CreateStream, "create-stream", true, "create or update the streams, consumers and buckets at start-up, as worker provision does (false: a worker whose NATS user may create nothing)")
	fs.DurationVar(&cfg.OutcomeWait, "outcome-wait", 10*time.Second, "how long a repeated request waits for the original's outcome")
	fs.DurationVar(&cfg.StoreTimeout, "store-lock-timeout", storage.DefaultTimeout, "how long to wait for another process's lock on the data file")
	fs.BoolVar(&cfg.AllowStoreGap, "allow-store-gap", false, "start even when a store restored from an old backup misses commands the stream no longer holds")
	fs.StringVar(&cfg.HTTPListen, "http-listen", "", "address of /metrics (Prometheus), /healthz, /readyz, /partitions and /backup (empty: none)")
	fs.DurationVar(&cfg.JWKSReload, "jwks-reload-interval", 10*time.Second, "how often the JWKS file is checked for changes (it is also reloaded on SIGHUP)")
	fs.StringVar(&cfg.FaultClock, "fault-clock", "", "for the fault campaign: a file that sets this worker's clock off (offset=<duration> rate=<number>), read every 100 ms; not for production")
	fs.Func("without", "mechanisms switched off, comma-separated, for the fault campaign's measure of what each earns (docs/reliability.md): "+
		strings.Join(mechanisms, ", ")+"; not for production", func(v string) error {
		for _, m := range strings.Split(v, ",") {
			if !slices.Contains(mechanisms, m) {
				return fmt.Errorf("%q is none of %s", m, strings.Join(mechanisms, ", "))
			}
			cfg.Without = append(cfg.Without, m)
		}
		return nil
	})
}

// mechanisms are what --without may switch off.
var mechanisms = []string{MechEarlyAnswers}

// settingsFlags adds the flags of what the workers use in JetStream
// (Config.Settings); retention is --outcome-retention's usage.
func settingsFlags(fs *flag.FlagSet, cfg *Config, retention string) {
	fs.DurationVar(&cfg.Retention, "outcome-retention", command.DefaultRetention, retention)
	fs.DurationVar(&cfg.DuplicateWindow, "duplicate-window", 2*time.Minute, "JetStream's duplicate window for Nats-Msg-Id")
	fs.DurationVar(&cfg.EventsRetention, "events-retention", DefaultEventsRetention, "how long stream PASSKEYS_EVENTS keeps an event")
	fs.DurationVar(&cfg.EventsDuplicates, "events-dedup-window", DefaultEventsDuplicates,
		"PASSKEYS_EVENTS' duplicate window: how late a second publication of an event (after a crash, or a restore's catch-up) is still dropped")
	fs.IntVar(&cfg.Partitions, "partitions", partition.DefaultCount, "how many partitions the users are split into; fixed when stream PASSKEYS is created")
	fs.IntVar(&cfg.Replicas, "replicas", 1, "JetStream replicas of everything the worker creates (streams, consumers, buckets): 3 on a three-node cluster")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", topology.LeaseTTL, "the TTL of lease bucket "+topology.LeaseBucket+" when this creates it (a bucket that exists keeps its own; "+
		"--reset-leases makes it again with this one): how long a partition waits for a worker that stopped renewing its lease; workers renew every third of it")
	fs.DurationVar(&cfg.AckWait, "ack-wait", topology.DefaultAckWait, "the ack wait of the partition consumers, set when this provisions them: "+
		"how soon the commands a worker took and did not acknowledge (it died, or lost the partition) are delivered again")
}

// natsFlags adds the connection flags; urlNote finishes --nats-url's usage.
func natsFlags(fs *flag.FlagSet, cfg *Config, urlNote string) {
	fs.StringVar(&cfg.NATSURL, "nats-url", "", "NATS server URL(s), "+urlNote)
	fs.StringVar(&cfg.NATSCreds, "nats-creds", "", "NATS credentials file")
	fs.StringVar(&cfg.InboxPrefix, "inbox-prefix", "", "prefix of the connection's inboxes, where its deliveries and replies arrive "+
		"(default: _INBOX_<user> when --nats-url names a user, else _INBOX)")
}

// provisionCommand is `worker provision`: an operator creates or updates
// the streams, consumers and buckets with a NATS user that may (nats.conf's
// passkeys-provisioner), so that the workers run with --create-stream=false
// under a user that cannot change them, and, with --jwks, sets the key set
// every worker trusts: the only way it changes where NATS has users.
func provisionCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var cfg Config
	fs := flag.NewFlagSet("worker provision", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsFlags(fs, &cfg, "with a user that may create the streams (required)")
	settingsFlags(fs, &cfg, "the workers' outcome retention: the stream's max age")
	wait := fs.Duration("wait", 5*time.Minute, "how long to wait for a JetStream cluster that is still forming")
	resetLeases := fs.Bool("reset-leases", false, "delete the lease bucket "+topology.LeaseBucket+" first and create it again empty, after its TTL: for a bucket NATS left without a leader, which workers then name (docs/operations.md)")
	fs.StringVar(&cfg.JWKS, "jwks", "", "a JSON Web Key Set file (public keys): the key set every partition's commands stored after it are judged by")
	fs.StringVar(&cfg.Issuer, "issuer", "", "with --jwks: the iss every token must have")
	fs.StringVar(&cfg.Audience, "audience", "", "with --jwks: the member of aud every token must have")
	fs.StringVar(&cfg.Verify, "verify", "", "with --jwks: the rule EdDSA signatures are checked by: \"\" (RFC 8032, one by one; the versions before's) or \"zip215\" (ZIP 215, checked in batches: write it only once every worker runs a version that knows it)")
	fs.IntVar(&cfg.Rules, "rules", 0, fmt.Sprintf("with --jwks: the rules version that judges the commands after the entry, 1 to %d (0: the versions before's, 1); write a new one only once every worker runs a version that knows it", trust.RulesVersion))
	fs.Usage = func() {
		made := topology.Settings{Partitions: partition.DefaultCount, Replicas: 1}.Describe()
		fmt.Fprintf(stderr, "Usage: worker provision --nats-url URL [flags]\n\nCreates or updates what the workers use in JetStream: %s\n(with --partitions and --replicas as given). A cluster that is still forming is\nwaited for (up to --wait). With --jwks, --issuer and --audience it also writes the\nkey set into every partition, where it is not the newest already: it judges every\ncommand stored after it. Rotate by running it again with the new file (add the\nnew key first, remove the old one later).\nThen exits.\n\nFlags:\n", made)
		fs.PrintDefaults()
	}
	if done, err := cli.ParseFlags(fs, args, getenv); done || err != nil {
		return err
	}
	if cfg.NATSURL == "" {
		return errors.New("provision: --nats-url is required (the embedded server's worker provisions its own streams)")
	}
	if err := cfg.Settings.Validate(); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	entry, err := provisionEntry(&cfg)
	if err != nil {
		return err
	}
	log, err := NewLogger(stderr, LogAuto, "info", "passkeys-provision")
	if err != nil {
		return err
	}
	nc, _, _, err := connect(&cfg, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	if *resetLeases {
		if err := topology.ResetLeases(ctx, js, cfg.Settings, log); err != nil {
			return fmt.Errorf("provision --reset-leases: %w", err)
		}
		fmt.Fprintf(stdout, "lease bucket %s deleted; creating it again\n", topology.LeaseBucket)
	}
	h, err := topology.Provision(ctx, js, cfg.Settings, log)
	if err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	fmt.Fprintf(stdout, "provisioned: %s\n", cfg.Settings.Describe())
	return provisionKeys(ctx, js, h.Stream, cfg.Partitions, entry, stdout, log)
}

// provisionEntry is the key set `worker provision` writes: none without
// --jwks.
func provisionEntry(cfg *Config) (*trust.Entry, error) {
	if cfg.JWKS == "" && cfg.Issuer == "" && cfg.Audience == "" {
		return nil, nil
	}
	if cfg.JWKS == "" || cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("provision: --jwks, --issuer and --audience go together")
	}
	keys, err := auth.LoadJWKS(cfg.JWKS)
	if err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	if cfg.Rules < 0 || cfg.Rules > trust.RulesVersion {
		return nil, fmt.Errorf("provision: --rules %d: this version knows rules 1 to %d", cfg.Rules, trust.RulesVersion)
	}
	e, err := trust.NewEntry(keys, cfg.Issuer, cfg.Audience, auth.Rule(cfg.Verify))
	if err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	e.Rules = cfg.Rules
	return e, nil
}

// provisionKeys writes entry (when given) as every partition's newest
// control entry: each partition's commands stored after it are judged by
// it. Partitions with no control entry first get one: the old key
// history's sets, where the stream has one (an upgrade), else entry, else
// partition 0's.
func provisionKeys(ctx context.Context, js jetstream.JetStream, st jetstream.Stream, n int, entry *trust.Entry, stdout io.Writer,
	log zerolog.Logger) error {
	var eras []trust.Era
	_, err := st.GetLastMsgForSubject(ctx, partition.ControlSubject(0))
	switch cfg := st.CachedInfo().Config; {
	case err == nil || cfg.Metadata[topology.MetaKeysCarried] != "":
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return fmt.Errorf("provision: partition 0's control entries: %w", err)
	default: // the upgrade: the old key history, read once, while no entry carries it
		if eras, err = trust.Legacy(ctx, js, log); err != nil {
			return fmt.Errorf("provision: %w", err)
		}
	}
	first := entry
	if len(eras) > 0 {
		iss, aud := "", ""
		if entry != nil {
			iss, aud = entry.Issuer, entry.Audience
		}
		if first, err = trust.FromLegacy(eras, iss, aud); err != nil {
			return fmt.Errorf("provision: %w", err)
		}
	}
	seeded, err := trust.Seed(ctx, js, st.GetLastMsgForSubject, n, first)
	if err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	if seeded && len(eras) > 0 {
		cfg := st.CachedInfo().Config
		cfg.Metadata = maps.Clone(cfg.Metadata)
		cfg.Metadata[topology.MetaKeysCarried] = "true"
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("provision: mark the old key history carried: %w", err)
		}
		fmt.Fprintf(stdout, "key sets: the %d sets of the old key history %s carried into every partition's first control entry\n", len(eras), topology.KeyStream)
	}
	if entry == nil {
		if m, err := st.GetLastMsgForSubject(ctx, partition.ControlSubject(0)); err == nil {
			fmt.Fprintf(stdout, "key sets: the newest unchanged (partition 0's at stream sequence %d)\n", m.Sequence)
		} else {
			fmt.Fprintf(stdout, "no key set yet: workers wait for `worker provision --jwks FILE --issuer ISS --audience AUD`\n")
		}
		return nil
	}
	written, err := trust.Write(ctx, js, st.GetLastMsgForSubject, n, entry)
	if err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	rule := "rfc8032"
	if entry.Verify != "" {
		rule = string(entry.Verify)
	}
	fmt.Fprintf(stdout, "key set (%d keys, issuer %s, audience %s, verify %s, rules %d): written into %d of %d partitions, in force for every command stored after it\n",
		len(entry.Keys.Keys), entry.Issuer, entry.Audience, rule, entry.RulesFor(false), written, n)
	return nil
}
