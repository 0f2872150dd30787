// Package metrics is the worker's Prometheus instrumentation. Every metric
// name begins with passkeys_.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/passkeys/worker/passkey"
)

// Metrics holds the worker's collectors on a registry of its own.
type Metrics struct {
	Registry *prometheus.Registry

	commands         *prometheus.CounterVec
	latency          prometheus.Histogram
	batchSize        prometheus.Histogram
	commit           prometheus.Histogram
	redeliveries     prometheus.Counter
	early            prometheus.Counter
	partitionChanges *prometheus.CounterVec
	published        prometheus.Counter
	written          prometheus.Counter
	storeErrors      prometheus.Counter
}

// New makes the collectors and registers them, with the Go and process
// collectors, on a new registry.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}
	counterVec := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		reg.MustRegister(c)
		return c
	}
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
		reg.MustRegister(h)
		return h
	}
	m := &Metrics{
		Registry: reg,
		commands: counterVec("passkeys_commands_total",
			"Commands answered, by operation and result code (OK or the gRPC code name); repeats answered from a stored outcome included.", "op", "code"),
		latency: histogram("passkeys_command_latency_seconds", "From the command's JetStream timestamp to its reply.",
			prometheus.ExponentialBuckets(0.0005, 2, 18)), // 0.5 ms to about 65 s
		batchSize: histogram("passkeys_batch_size", "Commands applied in one store transaction.",
			prometheus.ExponentialBuckets(1, 2, 11)), // 1 to 1024
		commit: histogram("passkeys_commit_duration_seconds", "Time to apply and commit one batch (its bbolt transaction, fsyncs included).",
			prometheus.ExponentialBuckets(0.0001, 2, 16)), // 0.1 ms to about 3 s
		redeliveries: counter("passkeys_redeliveries_total", "Commands received on a second or later delivery."),
		early: counter("passkeys_replies_early_total", "Replies sent before their command's delivery came here: commands another worker was handed "+
			"and did not acknowledge, applied from the stream at a takeover (or by the order check). Their deliveries are answered again when they come back."),
		partitionChanges: counterVec("passkeys_partition_changes_total",
			"Partitions this worker took (change=taken) or let go of (change=released): failovers and rebalancing.", "change"),
		written: counter("passkeys_events_written_total",
			"Events written into the outbox with the changes the consumer applied (catch-up and replay not counted)."),
		published: counter("passkeys_events_published_total",
			"Removal and sync events published to PASSKEYS_EVENTS and taken out of the outbox."),
		storeErrors: counter("passkeys_store_errors_total", "Batch transactions that failed (each retry counts)."),
	}
	// The runtime's and the process's own, under the same prefix as the rest.
	prometheus.WrapRegistererWithPrefix("passkeys_", reg).MustRegister(
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Gauge registers a gauge whose value is read at each scrape.
func (m *Metrics) Gauge(name, help string, value func() float64) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, value))
}

// CounterFunc registers a counter whose value is read at each scrape.
func (m *Metrics) CounterFunc(name, help string, value func() float64) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, value))
}

// Batch records one batch transaction.
func (m *Metrics) Batch(size int, took time.Duration, err error) {
	if err != nil {
		m.storeErrors.Inc()
		return
	}
	m.batchSize.Observe(float64(size))
	m.commit.Observe(took.Seconds())
}

// Answered records a command's answer; code is 0 for a success.
func (m *Metrics) Answered(op passkey.Op, code passkey.Code, _ string, storedAt time.Time) {
	if op == "" {
		op = "invalid"
	}
	_, name := code.Status()
	m.commands.WithLabelValues(string(op), name).Inc()
	m.latency.Observe(time.Since(storedAt).Seconds())
}

// Redelivered records a command received again.
func (m *Metrics) Redelivered() { m.redeliveries.Inc() }

// AnsweredEarly counts a reply sent before its command's delivery came.
func (m *Metrics) AnsweredEarly() { m.early.Inc() }

// EventWritten records a change applied, whose event went into the outbox.
func (m *Metrics) EventWritten() { m.written.Inc() }

// EventsPublished records events published from the outbox.
func (m *Metrics) EventsPublished(n int) { m.published.Add(float64(n)) }

// PartitionChange records a partition taken (change "taken") or let go of
// ("released").
func (m *Metrics) PartitionChange(change string) { m.partitionChanges.WithLabelValues(change).Inc() }

// GaugeVec registers a gauge with one label whose values are read at each
// scrape: values returns the label values and their gauges.
func (m *Metrics) GaugeVec(name, help, label string, values func() map[string]float64) {
	m.Registry.MustRegister(&gaugeVecFunc{desc: prometheus.NewDesc(name, help, []string{label}, nil), values: values})
}

type gaugeVecFunc struct {
	desc   *prometheus.Desc
	values func() map[string]float64
}

func (g *gaugeVecFunc) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *gaugeVecFunc) Collect(ch chan<- prometheus.Metric) {
	for label, v := range g.values() {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, v, label)
	}
}
