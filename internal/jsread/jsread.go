// Package jsread reads a stream's stored messages in order, without a
// consumer: a worker's NATS user may not create one on stream PASSKEYS
// (nats.conf), since NATS cannot tell a harmless ordered consumer from a
// durable one by its subject. Whatever it returns the stream's leader has
// confirmed, so a replica that is a moment behind can never make a read
// look complete when it is not.
package jsread

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// Reader reads one stream.
type Reader struct {
	js     jetstream.JetStream
	stream string
	// direct is set when the stream allows direct gets: Range then reads
	// batches of them, from any replica, up to what the leader confirmed.
	direct bool
}

// New returns a reader of stream; direct tells whether the stream allows
// direct gets (its AllowDirect).
func New(js jetstream.JetStream, stream string, direct bool) *Reader {
	return &Reader{js: js, stream: stream, direct: direct}
}

// getRequest is a leader-served STREAM.MSG.GET request.
type getRequest struct {
	Seq     uint64 `json:"seq,omitempty"`
	NextFor string `json:"next_by_subj,omitempty"`
	LastFor string `json:"last_by_subj,omitempty"`
}

type getResponse struct {
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *struct {
		Subject  string    `json:"subject"`
		Sequence uint64    `json:"seq"`
		Header   []byte    `json:"hdrs,omitempty"`
		Data     []byte    `json:"data,omitempty"`
		Time     time.Time `json:"time"`
	} `json:"message,omitempty"`
}

// apiSubject is the JetStream API subject api for the stream.
func (r *Reader) apiSubject(api string) string {
	prefix := r.js.Options().APIPrefix
	if prefix == "" {
		prefix = "$JS.API."
	} else if !strings.HasSuffix(prefix, ".") {
		prefix += "."
	}
	return prefix + api + "." + r.stream
}

// leaderGet asks the stream's leader (STREAM.MSG.GET is answered by the
// leader alone) for one message; jetstream.ErrMsgNotFound when there is
// none.
func (r *Reader) leaderGet(ctx context.Context, req getRequest) (*jetstream.RawStreamMsg, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var resp *nats.Msg
	for {
		actx, cancel := context.WithTimeout(ctx, attemptWait)
		resp, err = r.js.Conn().RequestWithContext(actx, r.apiSubject("STREAM.MSG.GET"), body)
		cancel()
		if err == nil || ctx.Err() != nil || !timedOut(err) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", r.stream, err)
	}
	var out getResponse
	if err := json.Unmarshal(resp.Data, &out); err != nil {
		return nil, fmt.Errorf("read stream %s: %w", r.stream, err)
	}
	if out.Error != nil {
		if out.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return nil, jetstream.ErrMsgNotFound
		}
		return nil, fmt.Errorf("read stream %s: %w", r.stream, out.Error)
	}
	if out.Message == nil {
		return nil, fmt.Errorf("read stream %s: an empty answer", r.stream)
	}
	m := &jetstream.RawStreamMsg{Subject: out.Message.Subject, Sequence: out.Message.Sequence, Data: out.Message.Data,
		Time: out.Message.Time.UTC(), Header: nats.Header{}}
	if len(out.Message.Header) > 0 {
		if m.Header, err = nats.DecodeHeadersMsg(out.Message.Header); err != nil {
			return nil, fmt.Errorf("read stream %s: headers of %d: %w", r.stream, m.Sequence, err)
		}
	}
	return m, nil
}

// Get is the message at seq, as the leader has it.
func (r *Reader) Get(ctx context.Context, seq uint64) (*jetstream.RawStreamMsg, error) {
	return r.leaderGet(ctx, getRequest{Seq: seq})
}

// Next is the first message at or after seq on subjects filter, as the
// leader has it; jetstream.ErrMsgNotFound when there is none yet.
func (r *Reader) Next(ctx context.Context, seq uint64, filter string) (*jetstream.RawStreamMsg, error) {
	return r.leaderGet(ctx, getRequest{Seq: seq, NextFor: filter})
}

// Last is the last message on subjects filter (wildcards allowed), as the
// leader has it; jetstream.ErrMsgNotFound when there is none.
func (r *Reader) Last(ctx context.Context, filter string) (*jetstream.RawStreamMsg, error) {
	return r.leaderGet(ctx, getRequest{LastFor: filter})
}

// attemptWait bounds one request to the stream. A server that froze (its
// process stopped, its routes not timed out yet) takes a request and never
// answers: a partition's catch-up waited on one until the runner gave up
// on it (30 s) in a frozen-node test. The next attempt goes to another
// replica, or to the leader elected meanwhile.
const attemptWait = 2 * time.Second

// timedOut tells whether err is a request that got no answer in time.
func timedOut(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
}

// batchSize is how many messages one direct get brings.
const batchSize = 256

// Read returns the messages on subjects filter whose sequence is from or
// more and through or less, in stream order: all of them, or the first max
// when there are more. through must be a message on filter that the leader
// has confirmed (Last, Next, or a consumer's delivery): reading up to it is
// what proves a read complete, so a replica that is behind is read again
// until it has caught up.
func (r *Reader) Read(ctx context.Context, filter string, from, through uint64, max int) ([]*jetstream.RawStreamMsg, error) {
	var out []*jetstream.RawStreamMsg
	keep := func(m *jetstream.RawStreamMsg) error {
		out = append(out, m)
		if len(out) == max {
			return errEnough
		}
		return nil
	}
	behind := 0
	for from <= through {
		actx, cancel := context.WithTimeout(ctx, attemptWait)
		next, err := r.read(actx, filter, from, through, keep)
		cancel()
		if errors.Is(err, errEnough) {
			return out, nil
		}
		if err != nil && (ctx.Err() != nil || !timedOut(err)) {
			return out, err
		}
		if next > from {
			from, behind = next, 0
			continue
		}
		// Nothing new: the replica that answered has not stored what the
		// leader confirmed yet, or the one asked did not answer.
		behind++
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-time.After(min(time.Duration(behind)*5*time.Millisecond, 200*time.Millisecond)):
		}
	}
	return out, nil
}

// errEnough ends a read that has as many messages as it was asked for.
var errEnough = errors.New("enough")

// read reads one batch from from on (leader gets, or a direct get batch)
// and returns the sequence after the last message handed to fn.
func (r *Reader) read(ctx context.Context, filter string, from, through uint64, fn func(*jetstream.RawStreamMsg) error) (uint64, error) {
	if !r.direct {
		for n := 0; n < batchSize && from <= through; n++ {
			m, err := r.Next(ctx, from, filter)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return from, nil
			}
			if err != nil {
				return from, err
			}
			if m.Sequence > through {
				return through + 1, nil
			}
			if err := fn(m); err != nil {
				return from, err
			}
			from = m.Sequence + 1
		}
		return from, nil
	}
	msgs, err := jetstreamext.GetBatch(ctx, r.js, r.stream, batchSize, jetstreamext.GetBatchSeq(from), jetstreamext.GetBatchSubject(filter))
	if err != nil {
		return from, fmt.Errorf("read stream %s: %w", r.stream, err)
	}
	for m, err := range msgs {
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			break
		}
		if err != nil {
			return from, fmt.Errorf("read stream %s: %w", r.stream, err)
		}
		if m.Sequence > through {
			return through + 1, nil
		}
		stripDirectHeaders(m.Header)
		if err := fn(m); err != nil {
			return from, err
		}
		from = m.Sequence + 1
	}
	return from, nil
}

// directHeaders are what a direct get adds to a stored message's own
// headers; a message read with one is the message as stored.
var directHeaders = []string{jetstream.StreamHeader, jetstream.SequenceHeader, jetstream.TimeStampHeaer, jetstream.SubjectHeader,
	"Nats-Num-Pending", "Nats-Last-Sequence"}

func stripDirectHeaders(h nats.Header) {
	for _, k := range directHeaders {
		delete(h, k)
	}
}
