package bench

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
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
	work    chan jetstream.Msg // with a verifier: to the verifying goroutines
	done    sync.WaitGroup
}

func (s *standIn) stop() {
	s.consume.Stop()
	_ = s.forward.Unsubscribe()
	if s.work != nil {
		<-s.consume.Closed()
		close(s.work)
		s.done.Wait()
	}
}

// verifier checks one token's signature, with no cache: the work no worker
// can skip for a command under a token it has not seen.
type verifier func(bearer string) error

// signatureVerifier verifies compact JWS tokens signed by key.
func signatureVerifier(key jose.JSONWebKey) verifier {
	pub := key.Public()
	algs := []jose.SignatureAlgorithm{jose.EdDSA, jose.RS256}
	return func(bearer string) error {
		jws, err := jose.ParseSignedCompact(strings.TrimPrefix(bearer, "Bearer "), algs)
		if err != nil {
			return err
		}
		_, err = jws.Verify(pub)
		return err
	}
}

// startStandIn creates the ceiling's stream and consumer and serves them,
// with as many replicas as stream PASSKEYS has (on a cluster: R3 like it).
// With verify, every command's token is verified first, on every core, as
// the worker's checks run: the ceiling of self-service traffic, where each
// command comes with a token not seen before.
func startStandIn(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, retention time.Duration, verify verifier) (*standIn, error) {
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
	// A reply of the worker's shape and size, which the publisher reads as it
	// reads the worker's.
	reply := []byte(`{"details":{"sequence":"1","creationDate":"2026-11-27T10:00:00.123456Z","changeDate":"2026-11-27T10:05:00.654321Z","resourceOwner":"bench-org"}}`)
	answer := func(m jetstream.Msg) {
		if to := m.Headers().Get("Reply-To"); to != "" {
			_ = nc.Publish(to, reply)
		}
		_ = m.Ack()
	}
	s := &standIn{}
	handle := answer
	if verify != nil {
		handle = s.verifying(verify, answer)
	}
	if s.consume, err = cons.Consume(handle, jetstream.PullMaxMessages(2048)); err != nil {
		return nil, err
	}
	consume := s.consume
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
	s.forward = forward
	return s, nil
}

// verifying starts a verifying goroutine per core, each verifying a
// command's token and then answering it, and returns what hands them the
// commands.
func (s *standIn) verifying(verify verifier, answer func(jetstream.Msg)) func(jetstream.Msg) {
	s.work = make(chan jetstream.Msg, 2048)
	for range runtime.NumCPU() {
		s.done.Go(func() {
			for m := range s.work {
				if verify(m.Headers().Get("Authorization")) == nil {
					answer(m)
				} else {
					_ = m.Term()
				}
			}
		})
	}
	return func(m jetstream.Msg) { s.work <- m }
}

// toCeiling turns a worker subject into the ceiling's: passkeys.cmd.<op>.<user>
// into bench.ceiling.cmd.<op>.<user>, passkeys.remove.<user> into
// bench.ceiling.req.<user>.
func toCeiling(subject string) string {
	if rest, ok := strings.CutPrefix(subject, partition.CommandPrefix+"."); ok {
		return ceilingCommands + "." + rest
	}
	return ceilingRequests + "." + strings.TrimPrefix(subject, partition.EndpointSubject(string(passkey.OpRemove), ""))
}
