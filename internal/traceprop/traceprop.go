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

// Carrier adapts a NATS header to otel's TextMapCarrier, for the W3C
// propagator: it writes the lower-case names, and reads only the headers
// Extract built with Of (a caller's spelling is Of's business).
type Carrier nats.Header

// Get returns the first value of key.
func (c Carrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
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

// Extract returns ctx with the remote span context h carries (Of), if any.
func Extract(ctx context.Context, h nats.Header) context.Context {
	parent, state := Of(h)
	if parent == "" {
		return ctx
	}
	return w3c.Extract(ctx, Carrier{HeaderParent: {parent}, HeaderState: {state}})
}

// MaxState bounds a tracestate this service carries (W3C's own advice is
// at least 512 bytes); a longer one is dropped, not cut.
const MaxState = 512

// Of is the trace context h carries, as the command's reply and event
// repeat it: a pure function of h, written here rather than by
// OpenTelemetry's propagator (whose output has changed between releases),
// so every worker of every version writes the same bytes for the same
// stored command. The traceparent must be W3C's version 00, lower-case
// hex, with a trace id and a span id that are not all zeros, given once
// under whatever spelling of its name; otherwise the command has no trace
// (a future version too). The tracestate is kept only beside a
// traceparent, given once, printable ASCII and at most MaxState bytes.
func Of(h map[string][]string) (parent, state string) {
	parents := values(h, HeaderParent)
	if len(parents) != 1 || !validParent(parents[0]) {
		return "", ""
	}
	if states := values(h, HeaderState); len(states) == 1 && validState(states[0]) {
		state = states[0]
	}
	return parents[0], state
}

// values collects the values of name under every spelling of it.
func values(h map[string][]string, name string) []string {
	var vals []string
	for k, v := range h {
		if len(k) == len(name) && strings.EqualFold(k, name) {
			vals = append(vals, v...)
		}
	}
	return vals
}

// validParent checks a version 00 traceparent: 00-<32 hex>-<16 hex>-<2 hex>.
func validParent(s string) bool {
	if len(s) != 55 || s[:3] != "00-" || s[35] != '-' || s[52] != '-' {
		return false
	}
	traceID, spanID, flags := s[3:35], s[36:52], s[53:55]
	return lowerHex(traceID) && lowerHex(spanID) && lowerHex(flags) &&
		strings.Trim(traceID, "0") != "" && strings.Trim(spanID, "0") != ""
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// validState checks a tracestate is printable ASCII of at most MaxState bytes.
func validState(s string) bool {
	if s == "" || len(s) > MaxState {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
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
