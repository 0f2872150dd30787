package trust

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/storage"
)

// LastFunc reads the last message stored on a subject, or
// jetstream.ErrMsgNotFound: a worker's jsread.Reader.Last, or the
// provisioner's direct get (its NATS user may read the control subjects
// alone, never a command).
type LastFunc func(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error)

// last is partition p's newest control entry: its stream sequence (0 for
// none) and body.
func last(ctx context.Context, read LastFunc, p int) (uint64, []byte, error) {
	m, err := read(ctx, partition.ControlSubject(p))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, nil, nil
	case err != nil:
		return 0, nil, fmt.Errorf("partition %d's control entries: %w", p, err)
	}
	return m.Sequence, m.Data, nil
}

// publish writes body as partition p's next control entry, unless the
// partition's newest is not at sequence after any more (another writer
// came first: written is false). The entry never expires.
func publish(ctx context.Context, js jetstream.JetStream, p int, body []byte, after uint64) (written bool, err error) {
	msg := nats.NewMsg(partition.ControlSubject(p))
	msg.Data = body
	msg.Header.Set(jetstream.MsgTTLHeader, "never")
	_, err = js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(after))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("write partition %d's control entry: %w", p, err)
	}
	return true, nil
}

// Write makes e the newest control entry of every partition (of n) whose
// newest trusts something else: each partition's commands stored after it
// are judged by e. It returns how many partitions it wrote to.
func Write(ctx context.Context, js jetstream.JetStream, read LastFunc, n int, e *Entry) (int, error) {
	body, err := e.Encode()
	if err != nil {
		return 0, err
	}
	written := 0
	for p := range n {
		for try := 0; ; try++ {
			seq, raw, err := last(ctx, read, p)
			if err != nil {
				return written, err
			}
			if cur, err := Parse(raw); err == nil && cur.Same(e) {
				break
			}
			ok, err := publish(ctx, js, p, body, seq)
			if err != nil {
				return written, err
			}
			if ok {
				written++
				break
			}
			if try == 5 {
				return written, fmt.Errorf("partition %d's control entries: another writer kept coming first", p)
			}
		}
	}
	// Another provisioner writing another set at the same time could leave
	// the partitions trusting different sets: said, to be run again.
	for p := range n {
		_, raw, err := last(ctx, read, p)
		if cur, perr := Parse(raw); err != nil || perr != nil || !cur.Same(e) {
			return written, fmt.Errorf("partition %d's newest control entry is another key set (%v): another provisioner wrote at the same time; run worker provision --jwks again", p, cmp.Or(err, perr))
		}
	}
	return written, nil
}

// Seed gives every partition (of n) that has no control entry partition
// 0's newest: first (when given), written to partition 0 when that has
// none either.
// Workers seeding at once with different files so agree on one set. It
// tells whether first went into partition 0.
func Seed(ctx context.Context, js jetstream.JetStream, read LastFunc, n int, first *Entry) (bool, error) {
	seq, _, err := last(ctx, read, 0)
	seeded := false
	if err == nil && seq == 0 && first != nil {
		var body []byte
		if body, err = first.Encode(); err == nil {
			seeded, err = publish(ctx, js, 0, body, 0)
		}
	}
	if err != nil {
		return false, err
	}
	_, body, err := last(ctx, read, 0)
	if err != nil || body == nil {
		return seeded, err
	}
	for p := 1; p < n; p++ {
		seq, _, err := last(ctx, read, p)
		if err == nil && seq == 0 {
			_, err = publish(ctx, js, p, body, 0)
		}
		if err != nil {
			return seeded, err
		}
	}
	return seeded, nil
}

// newestEntry is the newest control entry of any partition, as a worker
// reads it: its stream sequence (0 with none) and body.
func newestEntry(ctx context.Context, r *jsread.Reader) (uint64, []byte, error) {
	m, err := r.Last(ctx, partition.ControlSubjects)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, nil, nil
	case err != nil:
		return 0, nil, err
	}
	return m.Sequence, m.Data, nil
}

// AwaitEntries makes sure store keeps partition p's valid control
// entries, read from the stream: every one up to what the store has
// applied (a store written by a version before control entries, which took
// them for bad commands, judges what follows as one that applied them
// does), and at least one, the first: what judges the commands stored
// before it. While the stream holds none the partition waits (progress is
// called each round), saying what the operator has to do.
func AwaitEntries(ctx context.Context, store *storage.Store, r *jsread.Reader, p int, progress func(), log zerolog.Logger) error {
	applied, err := store.AppliedSeq()
	if err != nil {
		return err
	}
	// A store that keeps entries has what judged its commands, also when
	// the stream holds none any more (purged).
	kept := false
	if err := store.View(func(tx *storage.Tx) error {
		_, body, _ := tx.ControlBefore(applied + 1)
		kept = body != nil
		return nil
	}); err != nil {
		return err
	}
	found, warned := false, time.Time{}
	for from := uint64(1); ; {
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		m, err := r.Next(gctx, from, partition.ControlSubject(p))
		cancel()
		if err == nil {
			from = m.Sequence + 1
			if _, perr := Parse(m.Data); errors.Is(perr, ErrNewer) {
				return fmt.Errorf("partition %d, stream sequence %d: %w", p, m.Sequence, perr)
			} else if perr != nil {
				continue // left out, as the applier leaves it out
			}
			if err := store.Update(func(tx *storage.Tx) error { return tx.PutControl(m.Sequence, m.Data) }); err != nil {
				return err
			}
			if found = true; m.Sequence > applied {
				return nil
			}
			continue
		}
		if (found || kept) && errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if time.Since(warned) > time.Minute {
			warned = time.Now()
			log.Warn().Err(err).Msg("the partition has no key set in the stream yet; it waits for `worker provision --jwks FILE --issuer ISS --audience AUD`")
		}
		if progress != nil {
			progress()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
