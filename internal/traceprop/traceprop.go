// Package traceprop carries a W3C trace context (the traceparent and
// tracestate headers) in NATS message headers. It uses the W3C propagator
// itself, not otel's global one (a no-op until a program sets it), since
// the headers are part of the service's contract whether or not a program
// exports spans.
package traceprop

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Header names, as W3C Trace Context writes them.
const (
	HeaderParent = "traceparent"
	HeaderState  = "tracestate"
)

var w3c propagation.TraceContext

// Carrier adapts a NATS header to otel's TextMapCarrier. NATS headers are
// case-sensitive; a trace header is found in any letter case (an HTTP
// bridge may have written Traceparent), and written lower case.
type Carrier nats.Header

// Get returns the first value of key, in any letter case.
func (c Carrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	for k, v := range c {
		if len(k) == len(key) && len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

// Set sets key to value.
func (c Carrier) Set(key, value string) { c[key] = []string{value} }

// Keys lists the header's keys.
func (c Carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes ctx's span context into h; nothing when ctx has none.
func Inject(ctx context.Context, h nats.Header) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	w3c.Inject(ctx, Carrier(h))
}

// Extract returns ctx with the remote span context h carries, if any.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if len(h) == 0 {
		return ctx
	}
	return w3c.Extract(ctx, Carrier(h))
}

// Of is the trace context h carries, written anew by the W3C propagator
// (so a malformed header gives "" and a valid one its canonical form): the
// traceparent and tracestate a reply and an event of the command that
// carried h repeat. A pure function of h, so every worker that applies the
// command writes the same.
func Of(h nats.Header) (parent, state string) {
	if Carrier(h).Get(HeaderParent) == "" {
		return "", ""
	}
	sc := trace.SpanContextFromContext(w3c.Extract(context.Background(), Carrier(h)))
	if !sc.IsValid() {
		return "", ""
	}
	out := Carrier{}
	w3c.Inject(trace.ContextWithRemoteSpanContext(context.Background(), sc), out)
	return out.Get(HeaderParent), out.Get(HeaderState)
}

// Set sets h's trace headers to parent and state; nothing for "".
func Set(h nats.Header, parent, state string) {
	if parent == "" {
		return
	}
	h[HeaderParent] = []string{parent}
	if state != "" {
		h[HeaderState] = []string{state}
	}
}
