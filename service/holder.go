package service

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/reply"
	"github.com/passkeys/worker/storage"
)

// Router tells which partition a user is in, and gives the partition's
// store when this worker serves it.
type Router interface {
	Local(userID string) (held PartitionStore, partition int, ok bool)
}

// PartitionStore is the store of a partition this worker serves, and how to tell
// whether it still serves it: checked after the store was read and before
// the answer goes out, since a worker may have been paused in between and
// lost the partition to another that has changed it since.
type PartitionStore struct {
	Store *storage.Store
	Valid func() bool
}

// notHolder is the header of an internal answer from a worker that no
// longer serves the partition: the asker asks again.
const notHolder = "Passkeys-Not-Holder"

// holderWait is how long a read waits for a partition that has no holder
// (a failover under way) before it answers UNAVAILABLE.
const holderWait = 5 * time.Second

// outcomeQuery asks a partition's holder for a stored outcome.
type outcomeQuery struct {
	Subject     string `json:"subject"`
	Key         []byte `json:"key"`
	Fingerprint []byte `json:"fingerprint"`
}

// askHolder has the worker that serves partition p answer req (a list or
// a repeat's outcome), and relays its reply as it is. While no worker
// serves p, it asks again until holderWait, then answers UNAVAILABLE.
func (s *Endpoints) askHolder(req micro.Request, p int, kind, userID string, h nats.Header, body []byte) {
	subject := partition.InternalPartition(p) + kind + "." + userID
	ctx, cancel := context.WithTimeout(context.Background(), holderWait)
	defer cancel()
	for {
		msg := &nats.Msg{Subject: subject, Header: h, Data: body}
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := s.Conn.RequestMsgWithContext(rctx, msg)
		rcancel()
		if err == nil && resp.Header.Get(notHolder) != "" {
			err = nats.ErrNoResponders
		}
		if err == nil {
			respond(req, reply.Wire{Body: resp.Data, ErrorCode: resp.Header.Get(micro.ErrorCodeHeader), ErrorText: resp.Header.Get(micro.ErrorHeader)})
			return
		}
		if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			s.Log.Warn().Err(err).Int("partition", p).Msg("ask the partition's holder")
		}
		select {
		case <-ctx.Done():
			respond(req, reply.Error(passkey.ErrPartitionUnavailable))
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ServeInternal answers, from held's store, what other workers ask about
// partition p while this worker serves it: only while held.Valid, checked
// after the store was read. The caller unsubscribes when it lets go of p.
func (s *Endpoints) ServeInternal(p int, held PartitionStore) (*nats.Subscription, error) {
	prefix := partition.InternalPartition(p)
	answer := func(m *nats.Msg, r reply.Wire) {
		h := r.Header()
		if !held.Valid() {
			h = nats.Header{notHolder: []string{"1"}}
			r.Body = nil
		}
		_ = m.RespondMsg(&nats.Msg{Header: h, Data: r.Body})
	}
	return s.Conn.Subscribe(prefix+"*.*", func(m *nats.Msg) {
		kind, userID, _ := strings.Cut(m.Subject[len(prefix):], ".")
		switch kind {
		case "list":
			principal, err := s.verify(command.Header(m.Header))
			if err != nil {
				answer(m, reply.Error(passkey.AsError(err)))
				return
			}
			answer(m, s.listFrom(held.Store, principal, userID))
		case "outcome":
			var q outcomeQuery
			if err := json.Unmarshal(m.Data, &q); err != nil {
				answer(m, reply.Error(passkey.ErrInternal))
				return
			}
			go func() { // it may wait for the outcome: the subscription goes on meanwhile
				answer(m, s.storedAnswer(held.Store, q.Subject, userID, q.Key, q.Fingerprint))
			}()
		}
	})
}
