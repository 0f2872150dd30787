package publisher

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/passkeys/worker/client"
	"github.com/passkeys/worker/internal/progress"
	"github.com/passkeys/worker/internal/traceprop"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/publisher/batchfile"
)

// Job is one valid input line, ready to publish (batchfile.Job).
type Job = batchfile.Job

// LineResult is one line of the results file.
type LineResult struct {
	Line  int             `json:"line"`
	Input json.RawMessage `json:"input,omitempty"`
	Class string          `json:"outcome"` // ClassDone ... ClassUnanswered
	Reply json.RawMessage `json:"reply,omitempty"`
	Error string          `json:"error,omitempty"`

	Latency time.Duration `json:"-"` // from publish to reply, for the bench
}

// Classes of reply, the summary's columns (the results file's "outcome").
const (
	ClassDone       = "done" // shown as "removed" or "synced"
	classNotFound   = "not found"
	classLast       = "last login method"
	classDenied     = "permission denied"
	classOther      = "other"
	classBadLine    = "bad line"
	ClassUnanswered = "unanswered"
)

// Classify names the class of a reply to a command. A reply without the
// error headers is a success, its body kept as it came (the results file
// holds it): a batch of thousands does not parse every success.
func Classify(reply *nats.Msg) string { return classOf(replyError(reply)) }

// replyError is how a batch reads a command's reply (Classify).
func replyError(m *nats.Msg) error {
	if m.Header.Get(micro.ErrorCodeHeader) == "" {
		return nil
	}
	return client.ReplyError(m)
}

// classOf names the class of a command's answer: err as the client reads
// the reply (nil for a success).
func classOf(err error) string {
	var e *client.Error
	switch {
	case err == nil:
		return ClassDone
	case errors.Is(err, client.ErrLastPasskey):
		return classLast
	case !errors.As(err, &e):
		return classOther
	case e.Code == int(passkey.CodeNotFound):
		return classNotFound
	case e.Code == int(passkey.CodePermissionDenied):
		return classDenied
	default:
		return classOther
	}
}

// batchName is the default batch name: the file's name without extension.
func batchName(path string) string {
	base := filepath.Base(path)
	return strings.TrimSuffix(base, filepath.Ext(base))
}

// batchFlags are the flags revoke and sync share.
type batchFlags struct {
	name     string
	inFlight int
	results  string
	progress string
}

func (p *Publisher) batchFlagSet(name, what string) (*batchFlags, *Client, *flag.FlagSet) {
	fs := p.Flags(name, "FILE")
	c := ClientFlags(fs)
	b := &batchFlags{}
	fs.StringVar(&b.name, "batch", "", "the batch's name in the summary (default: the file's name); when given, it is also part of every Nats-Msg-Id, so the same lines under a new name are new commands")
	fs.IntVar(&b.inFlight, "in-flight", 256, "most "+what+" published and not yet answered")
	fs.StringVar(&b.results, "results", "", "write one JSON line per input line with its outcome to this file")
	fs.StringVar(&b.progress, "progress", "auto", "auto (a bar on a terminal, plain lines otherwise), bar, lines or none")
	return b, c, fs
}

// runBatch publishes every job as a batch publisher does and prints the
// summary; it returns the exit code.
func (p *Publisher) runBatch(ctx context.Context, c *Client, op, done string, path string, b *batchFlags,
	read func(io.Reader) ([]Job, []batchfile.BadLine, error)) int {
	jobs, bad, err := readJobs(p.Stdin, path, read)
	if err != nil {
		return p.Fail(ExitUsage, "%v", err)
	}
	for _, l := range bad {
		fmt.Fprintf(p.Stderr, "publisher: line %d: %v (skipped)\n", l.Line, l.Err)
	}
	// Ids come from what each line asks (commandID), never from the file's
	// name: another file with the same line is the same command, and a
	// changed line is a new one. An explicit --batch makes every line a new
	// command, for a deliberate second run of the same content.
	idPrefix := op
	if b.name != "" {
		idPrefix += ":" + b.name
	} else {
		b.name = batchName(path)
	}
	nc, err := p.Connect(c)
	if err != nil {
		return p.Fail(ExitFailed, "%v", err)
	}
	defer nc.Close()
	// Twice the lines in flight: a line is settled by its reply, which can
	// come before its publish's acknowledgement (on R3 it often does).
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*max(b.inFlight, 1)))
	if err != nil {
		return p.Fail(ExitFailed, "%v", err)
	}
	bar := progress.New(p.Stderr, b.progress, len(jobs), done)
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	p.denials.mu.Lock()
	p.denials.any = stop // a refusal by NATS applies to every Line: stop at the first
	p.denials.mu.Unlock()
	results := p.PublishJobs(ctx, nc, js, c, idPrefix, jobs, max(b.inFlight, 1), bar)
	bar.Finish()
	if cause := context.Cause(ctx); errors.Is(cause, nats.ErrPermissionViolation) {
		fmt.Fprintf(p.Stderr, "publisher: stopped: %v\n", cause)
	}

	return p.report(b, done, len(jobs), results, bad)
}

// readJobs reads the lines of path ("-": in) with read.
func readJobs(in io.Reader, path string, read func(io.Reader) ([]Job, []batchfile.BadLine, error)) ([]Job, []batchfile.BadLine, error) {
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, err
		}
		defer f.Close()
		in = f
	}
	jobs, bad, err := read(in)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	return jobs, bad, nil
}

// report writes the results file (with --results), prints the summary
// line, and returns the exit status: unanswered lines first, then bad
// lines, then refusals.
func (p *Publisher) report(b *batchFlags, done string, jobs int, results []LineResult, bad []batchfile.BadLine) int {
	counts := map[string]int{}
	for _, r := range results {
		counts[r.Class]++
	}
	counts[classBadLine] = len(bad)
	if b.results != "" {
		for _, l := range bad {
			results = append(results, LineResult{Line: l.Line, Class: classBadLine, Error: l.Err.Error()})
		}
		slices.SortFunc(results, func(a, b LineResult) int { return a.Line - b.Line })
		if err := writeResults(b.results, results); err != nil {
			return p.Fail(ExitFailed, "results: %v", err)
		}
	}
	fmt.Fprintf(p.Stdout, "%s: %d %s, %d not found, %d last login method, %d permission denied, %d other, %d bad lines, %d unanswered\n",
		b.name, counts[ClassDone], done, counts[classNotFound], counts[classLast], counts[classDenied],
		counts[classOther], counts[classBadLine], counts[ClassUnanswered])
	switch {
	case counts[ClassUnanswered] > 0:
		return ExitFailed
	case len(bad) > 0:
		return ExitUsage
	case counts[ClassDone] < jobs:
		return ExitRejected
	}
	return ExitOK
}

func writeResults(path string, results []LineResult) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// PublishJobs publishes each job to the stream with Reply-To and the
// Nats-Msg-Id commandID gives it, at most inFlight unanswered. A line that
// JetStream reports as a duplicate (this file was run before) gets its
// stored outcome through the request-reply endpoint with the same id.
func (p *Publisher) PublishJobs(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, c *Client, prefix string,
	jobs []Job, inFlight int, bar progress.Progress) []LineResult {
	b := &batchRun{jobs: jobs, results: make([]LineResult, len(jobs)), settled: make([]bool, len(jobs)),
		sent: make([]atomic.Int64, len(jobs)), slots: make(chan struct{}, inFlight), bar: bar}
	if p.Tracing != nil {
		b.spans = make([]trace.Span, len(jobs))
	}
	inbox := nc.NewInbox()
	sub, err := nc.Subscribe(inbox+".*", func(m *nats.Msg) {
		if i, err := strconv.Atoi(m.Subject[len(inbox)+1:]); err == nil && i >= 0 && i < len(jobs) {
			b.answer(i, m.Data, replyError(m))
		}
	})
	if err != nil {
		b.settleRest(err.Error())
		return b.results
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, -1)

	scope := ""
	if iss, sub, ok := tokenPrincipal(c.Bearer); ok {
		scope = passkey.MsgIDScope(iss, sub)
	}
	for i, j := range jobs {
		select {
		case b.slots <- struct{}{}:
		case <-ctx.Done():
			b.settleRest("interrupted")
			return b.results
		}
		b.wg.Add(1)
		jobScope := scope
		if j.Bearer != "" {
			jobScope = ""
			if iss, sub, ok := tokenPrincipal(j.Bearer); ok {
				jobScope = passkey.MsgIDScope(iss, sub)
			}
		}
		p.publishJob(ctx, nc, js, c, b, i, j, inbox, commandID(jobScope, prefix, j))
	}
	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	case <-time.After(c.Timeout + time.Duration(len(jobs))*time.Millisecond):
	}
	b.settleRest("no reply in time")
	return b.results
}

// publishJob publishes job i and has b answered when its reply comes: from
// the worker on the inbox, or, for a duplicate, from the stored outcome.
func (p *Publisher) publishJob(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, c *Client, b *batchRun, i int, j Job, inbox, msgID string) {
	msg := nats.NewMsg(j.Subject)
	bearer := c.Bearer
	if j.Bearer != "" {
		bearer = j.Bearer
	}
	msg.Header.Set("Authorization", "Bearer "+strings.TrimPrefix(bearer, "Bearer "))
	msg.Header.Set("Content-Type", "application/json")
	msg.Header.Set("Reply-To", inbox+"."+strconv.Itoa(i))
	msg.Header.Set(nats.MsgIdHdr, msgID)
	msg.Data = j.Body
	if b.spans != nil {
		// Each line is a trace of its own: its command, apply, reply and event.
		var span trace.Span
		ctx, span = p.Tracing.Tracer(tracerName).Start(ctx, "passkeys.publish", trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithNewRoot(), trace.WithAttributes(attribute.String("messaging.destination.name", j.Subject), attribute.Int("passkeys.line", j.Line)))
		b.spans[i] = span
		traceprop.Inject(ctx, msg.Header)
	}
	b.sent[i].Store(time.Now().UnixNano())
	future, err := js.PublishMsgAsync(msg)
	if err != nil {
		b.unanswered(i, err)
		return
	}
	go func() {
		select {
		case ack := <-future.Ok():
			if ack.Duplicate {
				// Stored before: JetStream dropped it, the worker will not
				// reply; its stored outcome is the answer.
				b.askOutcome(ctx, p.client(nc, bearer), c, i, j, msgID)
			}
		case err := <-future.Err():
			b.unanswered(i, err)
		}
	}()
}

// batchRun is one publishJobs: each line is settled once, by its reply, an
// error, or the final timeout, whichever comes first; after settleRest, no
// late reply writes any more (mu guards results and settled).
type batchRun struct {
	jobs    []Job
	sent    []atomic.Int64 // when each was published, for its latency
	spans   []trace.Span   // each line's span; nil without tracing
	slots   chan struct{}  // one per line published and not yet answered
	wg      sync.WaitGroup // the lines published and not yet answered
	bar     progress.Progress
	mu      sync.Mutex
	results []LineResult
	settled []bool
}

func (b *batchRun) settle(i int, r LineResult) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.settled[i] {
		return false
	}
	b.settled[i], b.results[i] = true, r
	if b.spans != nil && b.spans[i] != nil {
		b.spans[i].SetAttributes(attribute.String("passkeys.outcome", r.Class))
		b.spans[i].End()
	}
	return true
}

// askOutcome settles line i with the stored outcome of its first
// publication, asked through the client with the line's Nats-Msg-Id.
func (b *batchRun) askOutcome(ctx context.Context, cl *client.Client, c *Client, i int, j Job, msgID string) {
	if j.Ask == nil {
		b.unanswered(i, errors.New("published before; its outcome cannot be asked"))
		return
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	var body []byte
	err := j.Ask(ctx, cl, client.MsgID(msgID), client.ReplyBody(&body))
	var e *client.Error
	if err == nil || (errors.As(err, &e) && body != nil && !errors.Is(err, client.ErrOutcomeUnknown)) {
		b.answer(i, body, err)
		return
	}
	b.unanswered(i, err)
}

// unanswered settles line i with the error that left it without an answer.
func (b *batchRun) unanswered(i int, err error) {
	b.settleWith(i, LineResult{Class: ClassUnanswered, Error: err.Error()})
}

// answer settles line i with the worker's reply body and how the client
// reads it (nil for a success).
func (b *batchRun) answer(i int, body []byte, err error) {
	if errors.Is(err, client.ErrBadReply) {
		b.settleWith(i, LineResult{Class: classOther, Reply: jsonOrNil(body), Error: err.Error()})
		return
	}
	b.settleWith(i, LineResult{Class: classOf(err), Reply: jsonOrNil(body)})
}

// jsonOrNil is body for the results file, which holds it as JSON.
func jsonOrNil(body []byte) json.RawMessage {
	if !json.Valid(body) {
		return nil
	}
	return json.RawMessage(body)
}

func (b *batchRun) settleWith(i int, r LineResult) {
	r.Line, r.Input = b.jobs[i].Line, b.jobs[i].Input
	r.Latency = time.Duration(time.Now().UnixNano() - b.sent[i].Load())
	if !b.settle(i, r) {
		return
	}
	b.bar.Add(1)
	<-b.slots
	b.wg.Done()
}

// settleRest settles every line not settled yet as unanswered, for why.
func (b *batchRun) settleRest(why string) {
	for i, j := range b.jobs {
		b.settle(i, LineResult{Line: j.Line, Input: j.Input, Class: ClassUnanswered, Error: why})
	}
}

// commandID is the Nats-Msg-Id of job: prefix and a digest of what the
// line asks (its line number, subject and body), after scope: the
// principal of the publisher's token (passkey.MsgIDScope), as the forwarding
// endpoints scope the ids they store, so that a repeat asked through an
// endpoint finds the outcome of the line published straight into the stream.
func commandID(scope, prefix string, j Job) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d\n%s\n", j.Line, j.Subject)
	h.Write(j.Body)
	return scope + prefix + ":" + hex.EncodeToString(h.Sum(nil)[:8]) // 64 bits: unique among one principal's lines
}

// tokenPrincipal reads iss and sub from the publisher's own token, without
// verifying it: the worker verifies it, this only names the id's scope.
func tokenPrincipal(bearer string) (iss, sub string, ok bool) {
	parts := strings.Split(strings.TrimSpace(strings.TrimPrefix(bearer, "Bearer ")), ".")
	if len(parts) != 3 {
		return "", "", false
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", "", false
	}
	var claims struct {
		Iss string `json:"iss"`
		Sub string `json:"sub"`
	}
	if json.Unmarshal(raw, &claims) != nil || claims.Sub == "" {
		return "", "", false
	}
	return claims.Iss, claims.Sub, true
}
