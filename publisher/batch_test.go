package publisher

import (
	"context"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/passkeys/worker/internal/progress"
	"github.com/passkeys/worker/internal/testenv"
)

// publishJobs settles every line exactly once, even when replies are still
// arriving as its overall wait runs out: a reply and the timeout never both
// write a line (run under -race, this is where they would meet). A stand-in
// worker answers every other command, so half the lines are unanswered and
// the wait always runs out.
func TestPublishJobsSettlesEachLineOnce(t *testing.T) {
	nc, js := standIn(t, func(nc *nats.Conn, m jetstream.Msg) {
		if meta, err := m.Metadata(); err == nil && meta.Sequence.Stream%2 == 0 {
			_ = nc.Publish(m.Headers().Get("Reply-To"), []byte(success))
		}
	})
	ctx := context.Background()

	const n = 300
	jobs := make([]Job, n)
	for i := range jobs {
		jobs[i] = Job{Line: i + 1, UserID: "u" + strconv.Itoa(i), Subject: "passkeys.cmd.remove.u" + strconv.Itoa(i), Body: []byte(`{"tokenId":"pk-1"}`)}
	}
	p := &Publisher{Stderr: io.Discard}
	results := p.PublishJobs(ctx, nc, js, &Client{Timeout: time.Millisecond}, "test", jobs, n, progress.None{})
	counts := map[string]int{}
	for i, r := range results {
		if r.Line != i+1 {
			t.Fatalf("result %d is for line %d", i, r.Line)
		}
		counts[r.Class]++
		if (r.Class == ClassDone) != (r.Reply != nil) {
			t.Fatalf("line %d: outcome %q with reply %s", r.Line, r.Class, r.Reply)
		}
	}
	if counts[ClassDone]+counts[ClassUnanswered] != n || counts[ClassUnanswered] < n/2 {
		t.Fatalf("classes %v: want every line settled once, at least half unanswered", counts)
	}
}

// With tracing, each line of a batch is a trace of its own: its command
// carries the context of the line's span, which ends when the line settles.
func TestPublishJobsTraceEachLine(t *testing.T) {
	var mu sync.Mutex
	parents := map[string]bool{}
	nc, js := standIn(t, func(nc *nats.Conn, m jetstream.Msg) {
		mu.Lock()
		parents[m.Headers().Get("traceparent")] = true
		mu.Unlock()
		_ = nc.Publish(m.Headers().Get("Reply-To"), []byte(success))
	})
	ctx := context.Background()
	const n = 20
	jobs := make([]Job, n)
	for i := range jobs {
		jobs[i] = Job{Line: i + 1, UserID: "u" + strconv.Itoa(i), Subject: "passkeys.cmd.remove.u" + strconv.Itoa(i), Body: []byte(`{"tokenId":"pk-1"}`)}
	}
	rec := tracetest.NewSpanRecorder()
	p := &Publisher{Stderr: io.Discard, Tracing: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))}
	for _, r := range p.PublishJobs(ctx, nc, js, &Client{Timeout: 10 * time.Second}, "test", jobs, n, progress.None{}) {
		if r.Class != ClassDone {
			t.Fatalf("line %d: %s %s", r.Line, r.Class, r.Error)
		}
	}
	spans := rec.Ended()
	traces := map[string]bool{}
	for _, s := range spans {
		traces[s.SpanContext().TraceID().String()] = true
		want := "00-" + s.SpanContext().TraceID().String() + "-" + s.SpanContext().SpanID().String() + "-01"
		mu.Lock()
		ok := parents[want]
		mu.Unlock()
		if !ok {
			t.Errorf("no command carried %s", want)
		}
	}
	if len(spans) != n || len(traces) != n {
		t.Fatalf("%d spans in %d traces, want %d lines in a trace each", len(spans), len(traces), n)
	}
}

// success is a success reply of the worker's shape.
const success = `{"details":{"sequence":"1","creationDate":"2026-11-27T10:00:00Z","changeDate":"2026-11-27T10:00:00Z","resourceOwner":"o"}}`

// standIn is a NATS server with a stream PASSKEYS whose commands answer
// handles, in place of a worker, until the test ends.
func standIn(t *testing.T, answer func(*nats.Conn, jetstream.Msg)) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	ns := testenv.StartNATS(t)
	nc := testenv.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PASSKEYS", Subjects: []string{"passkeys.cmd.>"}})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) { answer(nc, m) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return nc, js
}
