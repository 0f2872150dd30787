package app

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/runner"
	"github.com/passkeys/worker/topology"
)

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
	// Verify is the rule the key set's EdDSA signatures are checked by
	// (auth.Rule: "" or "zip215").
	Verify string
	// Rules is the rules version `worker provision` writes (0: the
	// versions before's; trust.RulesVersion).
	Rules      int
	NATSConfig string // a nats-server configuration file for the embedded server; "" for none

	// Settings are those of the streams, consumers and buckets; zero
	// Partitions, Replicas, EventsRetention and EventsDuplicates take
	// partition.DefaultCount, 1, DefaultEventsRetention and
	// DefaultEventsDuplicates.
	topology.Settings
	// Options are how the partitions are run: batches, snapshots, stores.
	runner.Options
	CreateStream bool
	OutcomeWait  time.Duration
	JWKSReload   time.Duration // how often the JWKS file is checked for changes
	HTTPListen   string        // address of /metrics, /healthz, /readyz, /backup; "" for none
	// Without names mechanisms switched off (--without), for the fault
	// campaign's measure of what each one earns: MechEarlyAnswers.
	Without []string
	// FaultClock is a file that sets this worker's clocks off
	// (--fault-clock), for the fault campaign's clock faults: see package
	// internal/clock.
	FaultClock string

	// Started, when set, is called once the worker serves, with the URL
	// clients reach NATS at.
	Started func(natsURL string)
	// Tracing, when set, is where the worker's spans go (tests); nil: as
	// the OTEL_* environment says (package telemetry): exported over
	// OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set, else none.
	Tracing trace.TracerProvider
}

// The mechanisms --without may switch off.
const (
	// MechEarlyAnswers: a takeover answers at once the commands the holder
	// before left unanswered, and the order check those it applies from the
	// stream; without it, they are answered when their deliveries come back.
	MechEarlyAnswers = "early-answers"
)

// without tells whether mechanism m is switched off.
func (c *Config) without(m string) bool { return slices.Contains(c.Without, m) }

// Embedded reports whether the worker runs its own NATS server.
func (c *Config) Embedded() bool { return c.NATSURL == "" }

// DevMode reports whether the worker trusts the development key.
func (c *Config) DevMode() bool { return c.NATSURL == "" && c.JWKS == "" }

// Defaults of the events stream.
const (
	DefaultEventsRetention  = 365 * 24 * time.Hour
	DefaultEventsDuplicates = 24 * time.Hour
)

// Validate checks the configuration and fills in development defaults.
func (c *Config) Validate() error {
	c.Partitions = cmp.Or(c.Partitions, partition.DefaultCount)
	c.Replicas = cmp.Or(c.Replicas, 1)
	c.EventsRetention = cmp.Or(c.EventsRetention, DefaultEventsRetention)
	c.EventsDuplicates = cmp.Or(c.EventsDuplicates, DefaultEventsDuplicates)
	if c.DevMode() {
		c.Issuer = cmp.Or(c.Issuer, auth.DevIssuer)
		c.Audience = cmp.Or(c.Audience, auth.DevAudience)
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
	if err := c.Settings.Validate(); err != nil {
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
