package publisher

import (
	"context"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/internal/progress"
	"github.com/passkeys/worker/internal/testenv"
)

// publishJobs settles every line exactly once, even when replies are still
// arriving as its overall wait runs out: a reply and the timeout never both
// write a line (run under -race, this is where they would meet). A stand-in
// worker answers every other command, so half the lines are unanswered and
// the wait always runs out.
func TestPublishJobsSettlesEachLineOnce(t *testing.T) {
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
	cc, err := cons.Consume(func(m jetstream.Msg) {
		meta, err := m.Metadata()
		if err == nil && meta.Sequence.Stream%2 == 0 {
			_ = nc.Publish(m.Headers().Get("Reply-To"), []byte(`{"details":{"sequence":"1","creationDate":"2026-11-27T10:00:00Z","changeDate":"2026-11-27T10:00:00Z","resourceOwner":"o"}}`))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()

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
