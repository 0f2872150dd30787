// Command publisher talks to the passkeys worker the way a calling service
// or an operator would: it removes a passkey, syncs users from a file,
// lists a user's passkeys, and mints development tokens.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/passkeys/worker/app"
	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/cli"
	"github.com/passkeys/worker/internal/natsconn"
	"github.com/passkeys/worker/passkey"
)

// Exit codes.
const (
	exitOK       = 0
	exitRejected = 1 // the worker answered with an error
	exitUsage    = 2 // bad command line or input
	exitFailed   = 3 // NATS unreachable, no answer in time, or a local failure
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
  token                     mint a token with the local development key
  jwks                      print the JWKS that trusts the development key, for
                            a development worker run with --nats-url and --jwks
  bench                     measure throughput and latency (embedded worker by
                            default, or the worker behind --nats-url)

Common flags (remove, sync, list):
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

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one publisher command and returns its exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	p := &publisher{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	switch args[0] {
	case "remove":
		return p.remove(ctx, args[1:])
	case "sync":
		return p.sync(ctx, args[1:])
	case "revoke":
		return p.revoke(ctx, args[1:])
	case "replay":
		return p.replay(ctx, args[1:])
	case "list":
		return p.list(ctx, args[1:])
	case "token":
		return p.token(args[1:])
	case "bench":
		return p.bench(ctx, args[1:])
	case "jwks":
		return p.jwks(args[1:])
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "publisher: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
}

type publisher struct {
	getenv         func(string) string
	stdin          io.Reader
	stdout, stderr io.Writer

	denials denials
}

// client is the connection flags of a command that talks to NATS: where,
// as which NATS user, with which bearer token, and how long to wait.
type client struct {
	natsURL, natsCreds, inboxPrefix string
	bearer, bearerFile              string
	timeout                         time.Duration
}

// envFlags are the publisher's flags an environment variable may set
// (cli.EnvName): where and as whom, never what a command does.
var envFlags = map[string]bool{"nats-url": true, "nats-creds": true, "inbox-prefix": true, "token": true, "token-file": true,
	"data-dir": true, "issuer": true, "audience": true}

func (p *publisher) fail(code int, format string, args ...any) int {
	fmt.Fprintf(p.stderr, "publisher: "+format+"\n", args...)
	return code
}

// flags makes a command's flag set.
func (p *publisher) flags(name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(p.stderr)
	fs.Usage = func() {
		fmt.Fprintf(p.stderr, "Usage: publisher %s [flags] %s\n\nFlags:\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}

// clientFlags adds the connection flags to fs and returns where they land.
func clientFlags(fs *flag.FlagSet) *client {
	c := &client{}
	fs.StringVar(&c.natsURL, "nats-url", nats.DefaultURL, "NATS server URL(s) (env PASSKEYS_NATS_URL)")
	fs.StringVar(&c.natsCreds, "nats-creds", "", "NATS credentials file (env PASSKEYS_NATS_CREDS)")
	fs.StringVar(&c.inboxPrefix, "inbox-prefix", "", "prefix of this client's reply inboxes (env PASSKEYS_INBOX_PREFIX; default: _INBOX_<user> when --nats-url or --nats-creds names a user, else _INBOX)")
	fs.StringVar(&c.bearer, "token", "", "bearer token (JWT) (env PASSKEYS_TOKEN); prefer --token-file, which keeps it out of the process list")
	fs.StringVar(&c.bearerFile, "token-file", "", "file holding the bearer token (env PASSKEYS_TOKEN_FILE)")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "how long to wait for each reply")
	return c
}

// parse parses flags, before and after the arguments alike (`remove u1
// pk-1 --force`, as the README writes it; after "--" everything is an
// argument), the connection flags and the data directory also from the
// environment, and checks the number of positional arguments. The
// arguments are then fs.Args().
func (p *publisher) parse(fs *flag.FlagSet, args []string, positional int) (int, bool) {
	pos, err := cli.Parse(fs, args, p.getenv, func(name string) bool { return envFlags[name] })
	if cli.IsHelp(err) {
		return exitOK, false
	}
	if err != nil {
		if strings.HasPrefix(err.Error(), "PASSKEYS_") { // the flag package has said what otherwise
			fmt.Fprintf(fs.Output(), "publisher %s: %v\n", fs.Name(), err)
		}
		return exitUsage, false
	}
	if len(pos) != positional {
		fmt.Fprintf(fs.Output(), "publisher %s: want %d argument(s), got %d\n", fs.Name(), positional, len(pos))
		fs.Usage()
		return exitUsage, false
	}
	_ = fs.Parse(append([]string{"--"}, pos...)) // so fs.Arg(i) are the arguments
	return exitOK, true
}

// connect reads the token file, if any, and connects to NATS as c says.
func (p *publisher) connect(c *client) (*nats.Conn, error) {
	if c.bearerFile != "" {
		raw, err := os.ReadFile(c.bearerFile)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		c.bearer = strings.TrimSpace(string(raw))
	}
	opts := []nats.Option{nats.Name("passkeys-publisher"), nats.ErrorHandler(p.denials.notice)}
	if c.natsCreds != "" {
		opts = append(opts, nats.UserCredentials(c.natsCreds))
	}
	if prefix := natsconn.InboxPrefix(c.inboxPrefix, c.natsURL, c.natsCreds); prefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(prefix))
	}
	nc, err := nats.Connect(c.natsURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", natsconn.RedactURL(c.natsURL), err)
	}
	return nc, nil
}

// request sends one request and returns the reply, or an error when there
// was none.
func (p *publisher) request(ctx context.Context, nc *nats.Conn, c *client, subject string, body []byte, hdr nats.Header) (*nats.Msg, error) {
	msg := nats.NewMsg(subject)
	for k, v := range hdr {
		msg.Header[k] = v
	}
	if c.bearer != "" {
		msg.Header.Set("Authorization", "Bearer "+strings.TrimPrefix(c.bearer, "Bearer "))
	}
	msg.Header.Set("Content-Type", "application/json")
	msg.Data = body
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
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

// printReply writes the reply body as one line, and for an error reply
// also a short line on stderr. It returns the exit code the reply means.
func (p *publisher) printReply(reply *nats.Msg) int {
	fmt.Fprintf(p.stdout, "%s\n", reply.Data)
	if code := reply.Header.Get("Nats-Service-Error-Code"); code != "" {
		fmt.Fprintf(p.stderr, "publisher: %s %s\n", code, reply.Header.Get("Nats-Service-Error"))
		return exitRejected
	}
	return exitOK
}

func (p *publisher) remove(ctx context.Context, args []string) int {
	fs := p.flags("remove", "USER_ID TOKEN_ID")
	c := clientFlags(fs)
	force := fs.Bool("force", false, "skip the last-login-method check (administrators only)")
	msgID := fs.String("msg-id", "", "Nats-Msg-Id: repeat a removal with the same id to get its first reply")
	if code, ok := p.parse(fs, args, 2); !ok {
		return code
	}
	userID, tokenID := fs.Arg(0), fs.Arg(1)
	if err := passkey.ValidateUserID(userID); err != nil {
		return p.fail(exitUsage, "user id %q: %v", userID, err)
	}
	body, _ := json.Marshal(passkey.RemoveRequest{TokenID: tokenID, Force: *force})
	hdr := nats.Header{}
	if *msgID != "" {
		hdr.Set(nats.MsgIdHdr, *msgID)
	}
	return p.once(ctx, c, "passkeys.remove."+userID, body, hdr)
}

// once connects, sends one request, prints the reply and returns the exit
// code it means.
func (p *publisher) once(ctx context.Context, c *client, subject string, body []byte, hdr nats.Header) int {
	nc, err := p.connect(c)
	if err != nil {
		return p.fail(exitFailed, "%v", err)
	}
	defer nc.Close()
	reply, err := p.request(ctx, nc, c, subject, body, hdr)
	if err != nil {
		return p.fail(exitFailed, "%v", err)
	}
	return p.printReply(reply)
}

func (p *publisher) list(ctx context.Context, args []string) int {
	fs := p.flags("list", "USER_ID")
	c := clientFlags(fs)
	if code, ok := p.parse(fs, args, 1); !ok {
		return code
	}
	userID := fs.Arg(0)
	if err := passkey.ValidateUserID(userID); err != nil {
		return p.fail(exitUsage, "user id %q: %v", userID, err)
	}
	return p.once(ctx, c, "passkeys.list."+userID, nil, nil)
}

// syncLine is one line of a sync file: the user id beside the sync body.
type syncLine struct {
	UserID string `json:"userId"`
	passkey.SyncRequest
}

func (p *publisher) sync(ctx context.Context, args []string) int {
	b, c, fs := p.batchFlagSet("sync", "syncs")
	if code, ok := p.parse(fs, args, 1); !ok {
		return code
	}
	return p.runBatch(ctx, c, "sync", "synced", fs.Arg(0), b, readSyncs)
}

func (p *publisher) revoke(ctx context.Context, args []string) int {
	b, c, fs := p.batchFlagSet("revoke", "removals")
	if code, ok := p.parse(fs, args, 1); !ok {
		return code
	}
	return p.runBatch(ctx, c, "revoke", "removed", fs.Arg(0), b, readRevocations)
}

func (p *publisher) token(args []string) int {
	fs := p.flags("token", "")
	sub := fs.String("sub", "", "the acting user (required)")
	org := fs.String("org", "", "the principal's organisation (urn:zitadel:iam:user:resourceowner:id)")
	admin := fs.Bool("admin", false, "add scope passkeys:admin (administrator of --org)")
	system := fs.Bool("system", false, "add scope passkeys:system (administrator of every organisation)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	dataDir := fs.String("data-dir", "./data", "the worker's data directory, which holds the development key (env PASSKEYS_DATA_DIR)")
	issuer := fs.String("issuer", auth.DevIssuer, "iss claim (env PASSKEYS_ISSUER)")
	audience := fs.String("audience", auth.DevAudience, "aud claim (env PASSKEYS_AUDIENCE)")
	if code, ok := p.parse(fs, args, 0); !ok {
		return code
	}
	if *sub == "" {
		return p.fail(exitUsage, "token: --sub is required")
	}
	if *admin && *org == "" {
		return p.fail(exitUsage, "token: --admin needs --org")
	}
	key, err := auth.LoadDevKey(*dataDir)
	if err != nil {
		return p.fail(exitFailed, "token: no development key in %s (start the worker there without --nats-url and --jwks first): %v", *dataDir, err)
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
		return p.fail(exitFailed, "token: %v", err)
	}
	fmt.Fprintln(p.stdout, tok)
	return exitOK
}

func (p *publisher) jwks(args []string) int {
	fs := p.flags("jwks", "")
	dataDir := fs.String("data-dir", "./data", "the directory that holds the development key (env PASSKEYS_DATA_DIR)")
	if code, ok := p.parse(fs, args, 0); !ok {
		return code
	}
	key, err := auth.LoadDevKey(*dataDir)
	if err != nil {
		return p.fail(exitFailed, "jwks: %v", err)
	}
	raw, err := json.Marshal(auth.PublicSet(key))
	if err != nil {
		return p.fail(exitFailed, "jwks: %v", err)
	}
	fmt.Fprintf(p.stdout, "%s\n", raw)
	return exitOK
}

func (p *publisher) replay(ctx context.Context, args []string) int {
	fs := p.flags("replay", "")
	c := clientFlags(fs)
	from := fs.Uint64("from-seq", 0, "first stream sequence to re-drive (required)")
	to := fs.Uint64("to-seq", 0, "last stream sequence (default: as far as the worker's consumer has got)")
	since := fs.String("since", "", "only commands stored at or after this time (RFC 3339)")
	until := fs.String("until", "", "only commands stored before this time (RFC 3339)")
	user := fs.String("user", "", "only this user's commands")
	if code, ok := p.parse(fs, args, 0); !ok {
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
			return p.fail(exitUsage, "replay: --%s %q is not an RFC 3339 time", name, v)
		}
		r[name] = v
	}
	if *user != "" {
		r["userId"] = *user
	}
	body, _ := json.Marshal(r)
	if !flagSet(fs, "timeout") {
		c.timeout = 30 * time.Minute // a replay of a long range takes a while
	}
	return p.once(ctx, c, "passkeys.admin.replay", body, nil)
}

// denials ends a request at once when the server refuses its subject to
// this user, instead of letting it wait for its timeout: NATS reports a
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
