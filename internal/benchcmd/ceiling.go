package benchcmd

import (
	"context"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/topology"
)

// The transport's ceiling: the same publishes and requests, on a stream and
// a durable consumer with the worker's settings on the bench's own server,
// answered by a stand-in that only replies and acks, and, for requests, a
// stand-in endpoint that forwards into that stream as the worker's does. What
// the worker reaches is then stated as a share of it.
const (
	ceilingStream   = "BENCH_CEILING"
	ceilingCommands = "bench.ceiling.cmd"
	ceilingRequests = "bench.ceiling.req"
)

// standIn is the stand-in worker; stop ends it.
type standIn struct {
	consume jetstream.ConsumeContext
	forward *nats.Subscription
}

func (s *standIn) stop() {
	s.consume.Stop()
	_ = s.forward.Unsubscribe()
}

// startStandIn creates the ceiling's stream and consumer and serves them,
// with as many replicas as stream PASSKEYS has (on a cluster: R3 like it).
func startStandIn(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, retention time.Duration) (*standIn, error) {
	replicas := 1
	if s, err := js.Stream(ctx, topology.StreamName); err == nil {
		replicas = max(1, s.CachedInfo().Config.Replicas)
	}
	settings := topology.Settings{Retention: retention, DuplicateWindow: 2 * time.Minute, Partitions: 1, Replicas: replicas}
	sc := settings.StreamConfig()
	sc.Name, sc.Subjects, sc.Description = ceilingStream, []string{ceilingCommands + ".>"}, "bench: the transport's ceiling"
	sc.SubjectTransform, sc.Metadata = nil, nil
	stream, err := js.CreateOrUpdateStream(ctx, sc)
	if err != nil {
		return nil, err
	}
	cc := settings.PartitionConsumerConfig(0)
	cc.Durable, cc.FilterSubject, cc.Description = "bench-ceiling", ceilingCommands+".>", "bench: a stand-in that only replies and acks"
	cc.PriorityPolicy, cc.PriorityGroups, cc.PinnedTTL = jetstream.PriorityPolicyNone, nil, 0
	cons, err := stream.CreateOrUpdateConsumer(ctx, cc)
	if err != nil {
		return nil, err
	}
	reply := []byte(`{"details":{"sequence":"1"}}`)
	consume, err := cons.Consume(func(m jetstream.Msg) {
		if to := m.Headers().Get("Reply-To"); to != "" {
			_ = nc.Publish(to, reply)
		}
		_ = m.Ack()
	}, jetstream.PullMaxMessages(2048))
	if err != nil {
		return nil, err
	}
	forward, err := nc.Subscribe(ceilingRequests+".*", func(req *nats.Msg) {
		msg := nats.NewMsg(ceilingCommands + ".remove." + req.Subject[len(ceilingRequests)+1:])
		msg.Data = req.Data
		for k, v := range req.Header {
			msg.Header[k] = v
		}
		msg.Header.Set("Reply-To", req.Reply)
		_, _ = js.PublishMsgAsync(msg)
	})
	if err != nil {
		consume.Stop()
		return nil, err
	}
	return &standIn{consume: consume, forward: forward}, nil
}

// toCeiling turns a worker subject into the ceiling's: passkeys.cmd.<op>.<user>
// into bench.ceiling.cmd.<op>.<user>, passkeys.remove.<user> into
// bench.ceiling.req.<user>.
func toCeiling(subject string) string {
	if rest, ok := strings.CutPrefix(subject, "passkeys.cmd."); ok {
		return ceilingCommands + "." + rest
	}
	return ceilingRequests + "." + strings.TrimPrefix(subject, "passkeys.remove.")
}
