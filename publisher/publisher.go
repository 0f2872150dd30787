// Package publisher is the client tool's code (cmd/publisher is its main):
// it talks to the passkeys worker the way a calling service or an operator
// would: it removes a passkey, syncs users from a file, revokes in bulk,
// lists a user's passkeys, replays stored commands, and mints development
// tokens. It links no NATS server and no store: the benchmark, which runs
// an embedded worker, is its own command (cmd/bench, package benchcmd),
// sharing Connect and PublishJobs from here.
package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/client"
	"github.com/passkeys/worker/internal/cli"
	"github.com/passkeys/worker/internal/natsconn"
	"github.com/passkeys/worker/internal/telemetry/otlpjson"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/publisher/batchfile"
)

// Exit codes.
const (
	ExitOK       = 0
	ExitRejected = 1 // the worker answered with an error
	ExitUsage    = 2 // bad command line or input
	ExitFailed   = 3 // NATS unreachable, no answer in time, or a local failure
)

const usage = `Usage: publisher <command> [flags] [arguments]

Commands:
  remove USER_ID TOKEN_ID   remove one passkey (request-reply), print the reply
  sync FILE                 sync users from a JSON Lines file ('-' for stdin),
                            one {"userId": ..., <sync body>} per line
  revoke FILE               remove passkeys in bulk: JSON Lines {"userId","tokenId","force"}
                            or CSV with a header userId,tokenId[,force]; running the
                            same file again resumes (--batch, --results, --in-flight)
  list USER_ID              list a user's passkeys
  replay                    re-drive stored commands through the worker (passkeys:system):
                            --from-seq N --to-seq M [--since T] [--until T] [--user ID]
  events                    print removal and sync events (stream PASSKEYS_EVENTS) as JSON
                            lines: [--follow] [--since TIME|SEQ] [--user ID]
  token                     mint a token with the local development key
  jwks                      print the JWKS that trusts the development key, for
                            a development worker run with --nats-url and --jwks

Common flags (remove, list, sync, revoke, replay, events):
  --nats-url URL   NATS server (env PASSKEYS_NATS_URL, default nats://127.0.0.1:4222)
  --nats-creds F   NATS credentials file (env PASSKEYS_NATS_CREDS)
  --inbox-prefix P prefix of reply inboxes (env PASSKEYS_INBOX_PREFIX; default
                   _INBOX_<user> when the URL names a user, as nats.conf requires)
  --token JWT      bearer token (env PASSKEYS_TOKEN)
  --token-file F   file holding the bearer token (env PASSKEYS_TOKEN_FILE)
  --timeout D      how long to wait for each reply (default 10s)

Exit status: 0 success, 1 the worker refused (error reply), 2 usage or input
error, 3 NATS unreachable or no reply.

Run 'publisher <command> --help' for the flags of a command.
`

// Run executes one publisher command and returns its exit code.
func Run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return ExitUsage
	}
	p := &Publisher{Getenv: getenv, Stdin: stdin, Stdout: stdout, Stderr: stderr}
	tp, shutdown, err := otlpjson.LightProvider(ctx, getenv, "passkeys-publisher", "")
	if err != nil {
		return p.Fail(ExitUsage, "%v", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = shutdown(ctx)
	}()
	if tp != nil {
		p.Tracing = tp
	}
	switch args[0] {
	case "remove":
		return p.remove(ctx, args[1:])
	case "sync":
		return p.sync(ctx, args[1:])
	case "revoke":
		return p.revoke(ctx, args[1:])
	case "replay":
		return p.replay(ctx, args[1:])
	case "events":
		return p.events(ctx, args[1:])
	case "list":
		return p.list(ctx, args[1:])
	case "token":
		return p.token(args[1:])
	case "jwks":
		return p.jwks(args[1:])
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	default:
		fmt.Fprintf(stderr, "publisher: unknown command %q\n\n%s", args[0], usage)
		return ExitUsage
	}
}

type Publisher struct {
	// Program names the command in usage lines ("publisher" when empty).
	Program        string
	Getenv         func(string) string
	Stdin          io.Reader
	Stdout, Stderr io.Writer

	// Tracing, when set, records a span per call and per batch line, and
	// the commands carry its trace context (set from the OTEL_* environment).
	Tracing trace.TracerProvider

	denials denials
}

const tracerName = "github.com/passkeys/worker/publisher"

// client is the client package's view of nc, with bearer as the token.
func (p *Publisher) client(nc *nats.Conn, bearer string) *client.Client {
	opts := []client.Option{client.WithToken(bearer)}
	if p.Tracing != nil {
		opts = append(opts, client.WithTracerProvider(p.Tracing))
	}
	return client.New(nc, opts...)
}

// Client is the connection flags of a command that talks to NATS: where,
// as which NATS user, with which bearer token, and how long to wait.
type Client struct {
	NATSURL, NATSCreds, InboxPrefix string
	Bearer, BearerFile              string
	Timeout                         time.Duration
}

// envFlags are the publisher's flags an environment variable may set
// (cli.EnvName): where and as whom, never what a command does.
var envFlags = map[string]bool{"nats-url": true, "nats-creds": true, "inbox-prefix": true, "token": true, "token-file": true,
	"data-dir": true, "issuer": true, "audience": true}

// Fail prints a publisher error line and returns code.
func (p *Publisher) Fail(code int, format string, args ...any) int {
	fmt.Fprintf(p.Stderr, p.program()+": "+format+"\n", args...)
	return code
}

// program is the command's name in messages.
func (p *Publisher) program() string {
	if p.Program == "" {
		return "publisher"
	}
	return p.Program
}

// Flags makes a command's flag set.
func (p *Publisher) Flags(name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet(strings.TrimSpace(p.program()+" "+name), flag.ContinueOnError)
	fs.SetOutput(p.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(p.Stderr, "Usage: %s [flags] %s\n\nFlags:\n", fs.Name(), args)
		fs.PrintDefaults()
	}
	return fs
}

// ClientFlags adds the connection flags to fs and returns where they land.
func ClientFlags(fs *flag.FlagSet) *Client {
	c := &Client{}
	fs.StringVar(&c.NATSURL, "nats-url", nats.DefaultURL, "NATS server URL(s) (env PASSKEYS_NATS_URL)")
	fs.StringVar(&c.NATSCreds, "nats-creds", "", "NATS credentials file (env PASSKEYS_NATS_CREDS)")
	fs.StringVar(&c.InboxPrefix, "inbox-prefix", "", "prefix of this client's reply inboxes (env PASSKEYS_INBOX_PREFIX; default: _INBOX_<user> when --nats-url or --nats-creds names a user, else _INBOX)")
	fs.StringVar(&c.Bearer, "token", "", "bearer token (JWT) (env PASSKEYS_TOKEN); prefer --token-file, which keeps it out of the process list")
	fs.StringVar(&c.BearerFile, "token-file", "", "file holding the bearer token (env PASSKEYS_TOKEN_FILE)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "how long to wait for each reply (remove and list: retries included)")
	return c
}

// Parse parses flags, before and after the arguments alike (`remove u1
// pk-1 --force`, as the README writes it; after "--" everything is an
// argument), the connection flags and the data directory also from the
// environment, and checks the number of positional arguments. The
// arguments are then fs.Args().
func (p *Publisher) Parse(fs *flag.FlagSet, args []string, positional int) (int, bool) {
	pos, err := cli.Parse(fs, args, p.Getenv, func(name string) bool { return envFlags[name] })
	if cli.IsHelp(err) {
		return ExitOK, false
	}
	if err != nil {
		if strings.HasPrefix(err.Error(), "PASSKEYS_") { // the flag package has said what otherwise
			fmt.Fprintf(fs.Output(), "%s: %v\n", fs.Name(), err)
		}
		return ExitUsage, false
	}
	if len(pos) != positional {
		fmt.Fprintf(fs.Output(), "%s: want %d argument(s), got %d\n", fs.Name(), positional, len(pos))
		fs.Usage()
		return ExitUsage, false
	}
	_ = fs.Parse(append([]string{"--"}, pos...)) // so fs.Arg(i) are the arguments
	return ExitOK, true
}

// Connect reads the token file, if any, and connects to NATS as c says.
func (p *Publisher) Connect(c *Client) (*nats.Conn, error) {
	if c.BearerFile != "" {
		raw, err := os.ReadFile(c.BearerFile)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		c.Bearer = strings.TrimSpace(string(raw))
	}
	opts := []nats.Option{nats.Name("passkeys-publisher"), nats.ErrorHandler(p.denials.notice)}
	if c.NATSCreds != "" {
		opts = append(opts, nats.UserCredentials(c.NATSCreds))
	}
	if prefix := natsconn.InboxPrefix(c.InboxPrefix, c.NATSURL, c.NATSCreds); prefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(prefix))
	}
	nc, err := nats.Connect(c.NATSURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", natsconn.RedactURL(c.NATSURL), err)
	}
	return nc, nil
}

// Request sends one request and returns the reply, or an error when there
// was none.
func (p *Publisher) Request(ctx context.Context, nc *nats.Conn, c *Client, subject string, body []byte, hdr nats.Header) (*nats.Msg, error) {
	msg := nats.NewMsg(subject)
	for k, v := range hdr {
		msg.Header[k] = v
	}
	if c.Bearer != "" {
		msg.Header.Set("Authorization", "Bearer "+strings.TrimPrefix(c.Bearer, "Bearer "))
	}
	msg.Header.Set("Content-Type", "application/json")
	msg.Data = body
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	ctx, deny := context.WithCancelCause(ctx)
	defer p.denials.watch(subject, deny)()
	reply, err := nc.RequestMsgWithContext(ctx, msg)
	if cause := context.Cause(ctx); errors.Is(cause, nats.ErrPermissionViolation) {
		return nil, fmt.Errorf("%s: %w", subject, cause)
	}
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, fmt.Errorf("no worker answers %s: is it running?", subject)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", subject, err)
	}
	return reply, nil
}

func (p *Publisher) remove(ctx context.Context, args []string) int {
	fs := p.Flags("remove", "USER_ID TOKEN_ID")
	c := ClientFlags(fs)
	force := fs.Bool("force", false, "skip the last-login-method check (administrators only)")
	msgID := fs.String("msg-id", "", "Nats-Msg-Id: repeat a removal with the same id to get its first reply (default: a new one)")
	if code, ok := p.Parse(fs, args, 2); !ok {
		return code
	}
	userID, tokenID := fs.Arg(0), fs.Arg(1)
	if err := passkey.ValidateUserID(userID); err != nil {
		return p.Fail(ExitUsage, "user id %q: %v", userID, err)
	}
	var opts []client.CallOption
	if *force {
		opts = append(opts, client.Force())
	}
	if *msgID != "" {
		opts = append(opts, client.MsgID(*msgID))
	}
	return p.ask(ctx, c, partition.EndpointSubject(string(passkey.OpRemove), userID), func(ctx context.Context, cl *client.Client, o ...client.CallOption) error {
		_, err := cl.Remove(ctx, userID, tokenID, append(opts, o...)...)
		return err
	})
}

// ask connects and makes one client call (its retries included) within
// --timeout, prints the reply's body, and returns the exit code it means.
// A refusal also gets a short line on stderr, as the reply's
// Nats-Service-Error headers say it.
func (p *Publisher) ask(ctx context.Context, c *Client, subject string, call func(context.Context, *client.Client, ...client.CallOption) error) int {
	nc, err := p.Connect(c)
	if err != nil {
		return p.Fail(ExitFailed, "%v", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	ctx, deny := context.WithCancelCause(ctx)
	defer p.denials.watch(subject, deny)()
	var body []byte
	err = call(ctx, p.client(nc, c.Bearer), client.ReplyBody(&body))
	var e *client.Error
	switch {
	case errors.Is(err, client.ErrOutcomeUnknown):
		// Not a refusal of the change: an earlier attempt may have made it.
		return p.Fail(ExitFailed, "%v", err)
	case errors.As(err, &e) && e.HTTPStatus != 0:
		fmt.Fprintf(p.Stdout, "%s\n", body)
		fmt.Fprintf(p.Stderr, "%s: %d %s (%s)\n", p.program(), e.HTTPStatus, e.Message, e.ID)
		return ExitRejected
	case err != nil:
		return p.Fail(ExitFailed, "%v", err)
	}
	fmt.Fprintf(p.Stdout, "%s\n", body)
	return ExitOK
}

// once connects, sends one request, prints the reply and returns the exit
// code it means (replay, which the client package does not speak).
func (p *Publisher) once(ctx context.Context, c *Client, subject string, body []byte, hdr nats.Header) int {
	nc, err := p.Connect(c)
	if err != nil {
		return p.Fail(ExitFailed, "%v", err)
	}
	defer nc.Close()
	reply, err := p.Request(ctx, nc, c, subject, body, hdr)
	if err != nil {
		return p.Fail(ExitFailed, "%v", err)
	}
	fmt.Fprintf(p.Stdout, "%s\n", reply.Data)
	if code := reply.Header.Get("Nats-Service-Error-Code"); code != "" {
		fmt.Fprintf(p.Stderr, "%s: %s %s\n", p.program(), code, reply.Header.Get("Nats-Service-Error"))
		return ExitRejected
	}
	return ExitOK
}

func (p *Publisher) list(ctx context.Context, args []string) int {
	fs := p.Flags("list", "USER_ID")
	c := ClientFlags(fs)
	if code, ok := p.Parse(fs, args, 1); !ok {
		return code
	}
	userID := fs.Arg(0)
	if err := passkey.ValidateUserID(userID); err != nil {
		return p.Fail(ExitUsage, "user id %q: %v", userID, err)
	}
	return p.ask(ctx, c, partition.EndpointSubject(string(passkey.OpList), userID), func(ctx context.Context, cl *client.Client, o ...client.CallOption) error {
		_, err := cl.List(ctx, userID, o...)
		return err
	})
}

func (p *Publisher) sync(ctx context.Context, args []string) int {
	b, c, fs := p.batchFlagSet("sync", "syncs")
	if code, ok := p.Parse(fs, args, 1); !ok {
		return code
	}
	return p.runBatch(ctx, c, "sync", "synced", fs.Arg(0), b, batchfile.ReadSyncs)
}

func (p *Publisher) revoke(ctx context.Context, args []string) int {
	b, c, fs := p.batchFlagSet("revoke", "removals")
	if code, ok := p.Parse(fs, args, 1); !ok {
		return code
	}
	return p.runBatch(ctx, c, "revoke", "removed", fs.Arg(0), b, batchfile.ReadRevocations)
}

func (p *Publisher) token(args []string) int {
	fs := p.Flags("token", "")
	sub := fs.String("sub", "", "the acting user (required)")
	org := fs.String("org", "", "the principal's organisation (urn:zitadel:iam:user:resourceowner:id)")
	admin := fs.Bool("admin", false, "add scope passkeys:admin (administrator of --org)")
	system := fs.Bool("system", false, "add scope passkeys:system (administrator of every organisation)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	dataDir := fs.String("data-dir", "./data", "the worker's data directory, which holds the development key (env PASSKEYS_DATA_DIR)")
	issuer := fs.String("issuer", auth.DevIssuer, "iss claim (env PASSKEYS_ISSUER)")
	audience := fs.String("audience", auth.DevAudience, "aud claim (env PASSKEYS_AUDIENCE)")
	if code, ok := p.Parse(fs, args, 0); !ok {
		return code
	}
	if *sub == "" {
		return p.Fail(ExitUsage, "token: --sub is required")
	}
	if *admin && *org == "" {
		return p.Fail(ExitUsage, "token: --admin needs --org")
	}
	key, err := auth.LoadDevKey(*dataDir)
	if err != nil {
		return p.Fail(ExitFailed, "token: no development key in %s (start the worker there without --nats-url and --jwks first): %v", *dataDir, err)
	}
	var scopes []string
	if *admin {
		scopes = append(scopes, auth.ScopeAdmin)
	}
	if *system {
		scopes = append(scopes, auth.ScopeSystem)
	}
	tok, err := auth.Mint(key, auth.TokenRequest{Subject: *sub, Org: *org, Scopes: scopes, Issuer: *issuer, Audience: *audience, TTL: *ttl})
	if err != nil {
		return p.Fail(ExitFailed, "token: %v", err)
	}
	fmt.Fprintln(p.Stdout, tok)
	return ExitOK
}

func (p *Publisher) jwks(args []string) int {
	fs := p.Flags("jwks", "")
	dataDir := fs.String("data-dir", "./data", "the directory that holds the development key (env PASSKEYS_DATA_DIR)")
	if code, ok := p.Parse(fs, args, 0); !ok {
		return code
	}
	key, err := auth.LoadDevKey(*dataDir)
	if err != nil {
		return p.Fail(ExitFailed, "jwks: %v", err)
	}
	raw, err := json.Marshal(auth.PublicSet(key))
	if err != nil {
		return p.Fail(ExitFailed, "jwks: %v", err)
	}
	fmt.Fprintf(p.Stdout, "%s\n", raw)
	return ExitOK
}

func (p *Publisher) replay(ctx context.Context, args []string) int {
	fs := p.Flags("replay", "")
	c := ClientFlags(fs)
	from := fs.Uint64("from-seq", 0, "first stream sequence to re-drive (required)")
	to := fs.Uint64("to-seq", 0, "last stream sequence (default: as far as the worker's consumer has got)")
	since := fs.String("since", "", "only commands stored at or after this time (RFC 3339)")
	until := fs.String("until", "", "only commands stored before this time (RFC 3339)")
	user := fs.String("user", "", "only this user's commands")
	if code, ok := p.Parse(fs, args, 0); !ok {
		return code
	}
	r := map[string]any{"fromSeq": *from, "toSeq": *to}
	if *to == 0 {
		r["toSeq"] = uint64(1<<63 - 1)
	}
	for name, v := range map[string]string{"since": *since, "until": *until} {
		if v == "" {
			continue
		}
		if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
			return p.Fail(ExitUsage, "replay: --%s %q is not an RFC 3339 time", name, v)
		}
		r[name] = v
	}
	if *user != "" {
		r["userId"] = *user
	}
	body, _ := json.Marshal(r)
	if !FlagSet(fs, "timeout") {
		c.Timeout = 30 * time.Minute // a replay of a long range takes a while
	}
	return p.once(ctx, c, partition.ReplaySubject, body, nil)
}

// denials ends a request at once when the server refuses its subject to
// this user, instead of letting it wait for its Timeout: NATS reports a
// permissions violation asynchronously, not as the request's answer.
type denials struct {
	mu      sync.Mutex
	waiting map[*context.CancelCauseFunc]string
	// any, when set, hears of every refusal: a batch stops at the first.
	any context.CancelCauseFunc
}

// watch cancels the request through deny if publishing to subject is
// refused; the returned function stops watching.
func (d *denials) watch(subject string, deny context.CancelCauseFunc) func() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.waiting == nil {
		d.waiting = map[*context.CancelCauseFunc]string{}
	}
	d.waiting[&deny] = subject
	return func() {
		d.mu.Lock()
		delete(d.waiting, &deny)
		d.mu.Unlock()
	}
}

// notice is the connection's error handler.
func (d *denials) notice(_ *nats.Conn, _ *nats.Subscription, err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.any != nil {
		d.any(err)
	}
	for deny, subject := range d.waiting {
		if strings.Contains(err.Error(), `"`+subject+`"`) {
			(*deny)(err)
		}
	}
}

// FlagSet reports whether the command line set flag name.
func FlagSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}
