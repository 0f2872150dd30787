package runner

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/passkeys/worker/metrics"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/storage"
)

// partitionStatus is one partition in /partitions.
type partitionStatus struct {
	Partition       int     `json:"partition"`
	AppliedSeq      uint64  `json:"appliedSeq"`
	SnapshotSeq     uint64  `json:"snapshotSeq"`
	SnapshotAgeSecs float64 `json:"snapshotAgeSeconds"`
}

// Status is what /partitions reports: this worker and what it serves.
func (s *Set) Status() map[string]any {
	var served []partitionStatus
	for _, pt := range s.serving() {
		st := partitionStatus{Partition: pt.p, SnapshotAgeSecs: time.Since(pt.snapshotTime()).Seconds()}
		st.AppliedSeq, _ = pt.store.AppliedSeq()
		pt.snapMu.Lock()
		st.SnapshotSeq = pt.snapApplied
		pt.snapMu.Unlock()
		served = append(served, st)
	}
	out := map[string]any{"workerId": s.cfg.ID, "partitions": s.cfg.Partitions, "served": served}
	if u := s.Unrecoverable(); len(u) > 0 {
		why := map[string]string{}
		for p, err := range u {
			why[partition.Name(p)] = err.Error()
		}
		out["unrecoverable"] = why
	}
	if a := s.coord.Avoided(); len(a) > 0 {
		out["avoided"] = a
	}
	return out
}

// maxEventsWaiting is how long events may wait in the outbox before the
// worker says it is not ready.
const maxEventsWaiting = time.Minute

// maxSnapshotAgeFactor: a partition whose snapshot is older than this many
// snapshot intervals makes the worker not ready.
const maxSnapshotAgeFactor = 10

// Ready says why the partitions keep the worker from taking work, or nil:
// none may be unrecoverable, and every one served must have its store open,
// its outbox emptied and a recent snapshot.
func (s *Set) Ready() error {
	for p, err := range s.Unrecoverable() {
		return fmt.Errorf("partition %d cannot be rebuilt: %w", p, err)
	}
	maxAge := maxSnapshotAgeFactor * s.cfg.SnapshotInterval
	for _, pt := range s.serving() {
		if err := pt.store.View(func(*storage.Tx) error { return nil }); err != nil {
			return fmt.Errorf("store of partition %d: %w", pt.p, err)
		}
		if d := pt.events.Waiting(); d > maxEventsWaiting {
			return fmt.Errorf("partition %d: events have waited %s in the outbox without it being emptied", pt.p, d.Round(time.Second))
		}
		if d := time.Since(pt.snapshotTime()); d > maxAge {
			return fmt.Errorf("partition %d: its last snapshot is %s old", pt.p, d.Round(time.Second))
		}
	}
	return nil
}

// RegisterGauges adds the partitions' gauges, read at scrape time.
func (s *Set) RegisterGauges(m *metrics.Metrics) {
	sum := func(f func(*storage.Store) (int, error)) float64 {
		total := 0
		for _, pt := range s.serving() {
			n, err := f(pt.store)
			if err != nil {
				return -1
			}
			total += n
		}
		return float64(total)
	}
	consumers := s.consumerCounts()
	m.Gauge("passkeys_consumer_pending", "Commands of the partitions this worker serves not yet delivered to it (-1: unknown).", func() float64 {
		p, _ := consumers()
		return p
	})
	m.Gauge("passkeys_consumer_ack_pending", "Commands delivered and not yet acknowledged (-1: unknown).", func() float64 {
		_, a := consumers()
		return a
	})
	m.Gauge("passkeys_partitions_served", "Partitions this worker serves.", func() float64 {
		return float64(len(s.serving()))
	})
	m.GaugeVec("passkeys_partition_snapshot_age_seconds", "Age of the newest snapshot of each partition this worker serves.", "partition",
		func() map[string]float64 {
			out := map[string]float64{}
			for _, pt := range s.serving() {
				out[strconv.Itoa(pt.p)] = time.Since(pt.snapshotTime()).Seconds()
			}
			return out
		})
	m.CounterFunc("passkeys_snapshot_bytes_total", "Bytes of the partitions' snapshots this worker wrote.", func() float64 {
		return float64(s.snapBytes.Load())
	})
	m.Gauge("passkeys_snapshot_failures", "Snapshots that could not be written since the worker started.", func() float64 {
		return float64(s.snapFailures.Load())
	})
	m.Gauge("passkeys_partitions_unrecoverable", "Partitions whose state could not be rebuilt here from a snapshot and the stream: not served.", func() float64 {
		return float64(len(s.Unrecoverable()))
	})
	m.Gauge("passkeys_outcome_records", "Outcome records held for repeats, in the partitions this worker serves (-1: unknown).", func() float64 {
		return sum(func(st *storage.Store) (int, error) { n, err := st.OutcomeCount(); return int(n), err })
	})
	m.Gauge("passkeys_events_waiting", "Events in the outboxes, written with their change and not yet published (-1: unknown).", func() float64 {
		return sum(func(st *storage.Store) (int, error) { return st.OutboxLen() })
	})
}

// consumerCounts returns a function that reads the pending and
// ack-pending counts of the partitions' consumers: from one Info call per
// partition, since a scrape reads both gauges together, so an answer
// younger than a second serves the second gauge.
func (s *Set) consumerCounts() func() (pending, ackPending float64) {
	var mu sync.Mutex
	var pending, ackPending float64
	var at time.Time
	return func() (float64, float64) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(at) < time.Second {
			return pending, ackPending
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		pending, ackPending = 0, 0
		for _, pt := range s.serving() {
			ci, err := pt.cons.Info(ctx)
			if err != nil {
				pending, ackPending = -1, -1
				break
			}
			pending += float64(ci.NumPending)
			ackPending += float64(ci.NumAckPending)
		}
		at = time.Now()
		return pending, ackPending
	}
}
