package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/passkeys/worker/app"
	"github.com/passkeys/worker/client"
	"github.com/passkeys/worker/internal/testenv"
)

// recorder is one process's in-memory span exporter.
type recorder struct {
	name string
	rec  *tracetest.SpanRecorder
	tp   *sdktrace.TracerProvider
}

func newRecorder(name string) *recorder {
	rec := tracetest.NewSpanRecorder()
	return &recorder{name: name, rec: rec, tp: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))}
}

// span is the first ended span of trace tid named name, and who recorded it.
func findSpan(recs []*recorder, tid trace.TraceID, name string) (sdktrace.ReadOnlySpan, string) {
	for _, r := range recs {
		for _, s := range r.rec.Ended() {
			if s.SpanContext().TraceID() == tid && s.Name() == name {
				return s, r.name
			}
		}
	}
	return nil, ""
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 20 s for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling the condition itself
	}
}

// One removal is one trace, from the client's call, through the endpoint
// on one worker, to the apply, the reply and the event's publication on the
// worker that owns the user's partition; the event carries the trace as
// CloudEvents' traceparent, and no span attribute holds the token.
func TestOneTraceAcrossTwoWorkers(t *testing.T) {
	s := newStack(t)
	w1, w2, caller := newRecorder("w1"), newRecorder("w2"), newRecorder("caller")
	s.startWorker(t, t.TempDir(), func(c *app.Config) { c.Tracing = w1.tp })
	s.startWorker(t, t.TempDir(), func(c *app.Config) { c.Tracing = w2.tp })
	workers := []*recorder{w1, w2}
	nc := testenv.Connect(t, s.url)
	token := s.system(t)
	c := client.New(nc, client.WithToken(token), client.WithTracerProvider(caller.tp))
	ctx := context.Background()
	var pks []client.Passkey
	for k := range 64 {
		pks = append(pks, client.Passkey{ID: fmt.Sprint("pk-", k), State: client.StateReady})
	}
	if _, err := c.Sync(ctx, client.User{ID: "u1", ResourceOwner: "org1", Password: true, Passkeys: pks}); err != nil {
		t.Fatal(err)
	}

	// The micro service's queue group hands each request to either
	// worker; the partition has one owner. Remove until a request's
	// endpoint ran on the worker that does not own the partition.
	var tid trace.TraceID
	var endpointOn, applyOn string
	var seq uint64
	for k := 0; k < len(pks) && endpointOn == applyOn; k++ {
		d, err := c.Remove(ctx, "u1", pks[k].ID)
		if err != nil {
			t.Fatal(err)
		}
		seq = d.Sequence
		calls := caller.rec.Ended()
		tid = calls[len(calls)-1].SpanContext().TraceID()
		// The endpoint's span may end after the reply (it waits for the
		// stream's acknowledgement of the forward): wait for both.
		waitUntil(t, "the endpoint and apply spans", func() bool {
			e, _ := findSpan(workers, tid, "passkeys.endpoint.remove")
			a, _ := findSpan(workers, tid, "passkeys.apply")
			return e != nil && a != nil
		})
		_, endpointOn = findSpan(workers, tid, "passkeys.endpoint.remove")
		_, applyOn = findSpan(workers, tid, "passkeys.apply")
	}
	if endpointOn == "" || endpointOn == applyOn {
		t.Fatalf("no removal crossed workers: endpoint on %q, apply on %q", endpointOn, applyOn)
	}

	t.Logf("the endpoint ran on %s, the apply on %s", endpointOn, applyOn)
	all := append([]*recorder{caller}, workers...)
	call, _ := findSpan(all, tid, "passkeys.remove")
	endpoint, _ := findSpan(all, tid, "passkeys.endpoint.remove")
	apply, _ := findSpan(all, tid, "passkeys.apply")
	waitUntil(t, "the reply and event spans", func() bool {
		r, _ := findSpan(all, tid, "passkeys.reply")
		e, _ := findSpan(all, tid, "passkeys.event.publish")
		return r != nil && e != nil
	})
	replied, _ := findSpan(all, tid, "passkeys.reply")
	waited, _ := findSpan(all, tid, "passkeys.commit.wait")
	if waited == nil || waited.StartTime().After(apply.StartTime()) || waited.EndTime().After(apply.EndTime()) {
		t.Errorf("the wait for the commit %v should start when the stream stored the command, before the apply %v", waited, apply)
	}
	published, publishedOn := findSpan(all, tid, "passkeys.event.publish")
	for _, link := range []struct {
		name          string
		child, parent sdktrace.ReadOnlySpan
	}{
		{"endpoint <- client call", endpoint, call},
		{"apply <- endpoint", apply, endpoint},
		{"reply <- apply", replied, apply},
		{"commit wait <- apply", waited, apply},
		{"event <- endpoint (the command's trace context)", published, endpoint},
	} {
		if link.child.Parent().SpanID() != link.parent.SpanContext().SpanID() {
			t.Errorf("%s: parent %s, want %s", link.name, link.child.Parent().SpanID(), link.parent.SpanContext().SpanID())
		}
	}
	if publishedOn != applyOn {
		t.Errorf("the event was published on %s, the change applied on %s", publishedOn, applyOn)
	}
	batchLinked := false
	for _, r := range workers {
		for _, sp := range r.rec.Ended() {
			for _, l := range sp.Links() {
				batchLinked = batchLinked || (sp.Name() == "passkeys.batch.commit" && l.SpanContext.SpanID() == apply.SpanContext().SpanID())
			}
		}
	}
	if !batchLinked {
		t.Error("no batch commit span links to the command's apply span")
	}

	// The event carries the trace as CloudEvents' extension and as headers.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		ID          string `json:"id"`
		TraceParent string `json:"traceparent"`
	}
	waitUntil(t, "the event", func() bool {
		m, err := lastEvent(ctx, js, "u1")
		if err != nil {
			return false
		}
		_ = json.Unmarshal(m.Data, &doc)
		if doc.ID == fmt.Sprint("u1:", seq) && m.Header.Get("traceparent") != doc.TraceParent {
			t.Errorf("event header traceparent %q, document %q", m.Header.Get("traceparent"), doc.TraceParent)
		}
		return doc.ID == fmt.Sprint("u1:", seq)
	})
	if want := "00-" + tid.String() + "-" + endpoint.SpanContext().SpanID().String() + "-01"; doc.TraceParent != want {
		t.Errorf("event traceparent %q, want %q", doc.TraceParent, want)
	}

	for _, r := range all {
		for _, sp := range r.rec.Ended() {
			for _, a := range sp.Attributes() {
				if v := a.Value.String(); strings.Contains(v, token) || strings.Contains(v, "eyJ") {
					t.Errorf("%s's span %s: attribute %s holds a token", r.name, sp.Name(), a.Key)
				}
			}
		}
	}
}

// A request's and a stream command's trace context comes back on the
// reply's headers, and in the event, with no tracing set up anywhere.
func TestTraceContextWithoutTracing(t *testing.T) {
	s := newStack(t)
	s.startWorker(t, t.TempDir())
	nc := testenv.Connect(t, s.url)
	ctx := context.Background()
	token := s.system(t)
	if _, err := client.New(nc, client.WithToken(token)).Sync(ctx, client.User{ID: "u1", ResourceOwner: "org1", Password: true,
		Passkeys: []client.Passkey{{ID: "pk-1", State: client.StateReady}, {ID: "pk-2", State: client.StateReady}}}); err != nil {
		t.Fatal(err)
	}
	const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	const state = "vendor=opaque"
	ask := func(subject, body, msgID string) *nats.Msg {
		m := nats.NewMsg(subject)
		m.Header.Set("Authorization", "Bearer "+token)
		m.Header.Set("Traceparent", parent) // any letter case, as an HTTP bridge may write it
		m.Header.Set("tracestate", state)
		m.Header.Set(nats.MsgIdHdr, msgID)
		m.Data = []byte(body)
		return m
	}
	r, err := nc.RequestMsg(ask("passkeys.remove.u1", `{"tokenId":"pk-1"}`, "t-1"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Header.Get("traceparent") != parent || r.Header.Get("tracestate") != state {
		t.Errorf("request-reply: reply headers %v", r.Header)
	}

	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	cmd := ask("passkeys.cmd.remove.u1", `{"tokenId":"pk-2"}`, "t-2")
	cmd.Header.Set("Reply-To", inbox)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, cmd); err != nil {
		t.Fatal(err)
	}
	r, err = sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Header.Get("traceparent") != parent || strings.Contains(string(r.Data), "code") {
		t.Errorf("stream command: reply %s, headers %v", r.Data, r.Header)
	}
	waitUntil(t, "the event of sequence 3", func() bool {
		m, err := lastEvent(ctx, js, "u1")
		return err == nil && strings.Contains(string(m.Data), `"id":"u1:3"`) &&
			strings.Contains(string(m.Data), `"traceparent":"`+parent+`","tracestate":"`+state+`"`)
	})
}

// lastEvent is the newest event of userID in stream PASSKEYS_EVENTS.
func lastEvent(ctx context.Context, js jetstream.JetStream, userID string) (*jetstream.RawStreamMsg, error) {
	st, err := js.Stream(ctx, "PASSKEYS_EVENTS")
	if err != nil {
		return nil, err
	}
	return st.GetLastMsgForSubject(ctx, "passkeys.events."+userID)
}

// With OTEL_EXPORTER_OTLP_ENDPOINT set, the worker exports its spans with
// OpenTelemetry's OTLP/HTTP exporter (flushed when it stops).
func TestWorkerExportsOverOTLPHTTP(t *testing.T) {
	var mu sync.Mutex
	var bodies [][]byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/v1/traces" && r.Header.Get("Content-Type") == "application/x-protobuf" {
			mu.Lock()
			bodies = append(bodies, body)
			mu.Unlock()
		}
	}))
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	s := newStack(t)
	stop := s.startWorker(t, t.TempDir())
	nc := testenv.Connect(t, s.url)
	c := client.New(nc, client.WithToken(s.system(t)))
	if _, err := c.Sync(context.Background(), client.User{ID: "u1", ResourceOwner: "org1", Password: true}); err != nil {
		t.Fatal(err)
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	all := bytes.Join(bodies, nil)
	for _, name := range []string{"passkeys.endpoint.sync", "passkeys.apply", "passkeys.batch.commit", "passkeys-worker"} {
		if !bytes.Contains(all, []byte(name)) {
			t.Errorf("no %s in what was exported (%d requests)", name, len(bodies))
		}
	}
}
