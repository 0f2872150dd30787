package traceprop

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

// Of is a pure function of the header: the same input gives the same
// output every time (no map order), and anything but one well-formed
// version 00 traceparent gives no trace.
func TestOf(t *testing.T) {
	long := strings.Repeat("a=b,", MaxState/4+1)
	for _, tt := range []struct {
		name          string
		h             nats.Header
		parent, state string
	}{
		{"None", nats.Header{"Authorization": {"x"}}, "", ""},
		{"Plain", nats.Header{"traceparent": {parent}, "tracestate": {"k=v"}}, parent, "k=v"},
		{"OtherCase", nats.Header{"Traceparent": {parent}, "TRACESTATE": {"k=v"}}, parent, "k=v"},
		{"RandomFlag", nats.Header{"traceparent": {parent[:53] + "03"}}, parent[:53] + "03", ""},
		{"TwoSpellings", nats.Header{"Traceparent": {parent}, "TRACEPARENT": {parent[:3] + "1" + parent[4:]}}, "", ""},
		{"TwoValues", nats.Header{"traceparent": {parent, parent}}, "", ""},
		{"UpperHex", nats.Header{"traceparent": {strings.ToUpper(parent)}}, "", ""},
		{"ZeroTraceID", nats.Header{"traceparent": {"00-" + strings.Repeat("0", 32) + parent[35:]}}, "", ""},
		{"ZeroSpanID", nats.Header{"traceparent": {parent[:36] + strings.Repeat("0", 16) + parent[52:]}}, "", ""},
		{"OtherVersion", nats.Header{"traceparent": {"01" + parent[2:]}}, "", ""},
		{"Trailing", nats.Header{"traceparent": {parent + "-x"}}, "", ""},
		{"Spaces", nats.Header{"traceparent": {" " + parent}}, "", ""},
		{"StateWithoutParent", nats.Header{"tracestate": {"k=v"}}, "", ""},
		{"LongState", nats.Header{"traceparent": {parent}, "tracestate": {long}}, parent, ""},
		{"TwoStates", nats.Header{"traceparent": {parent}, "tracestate": {"a=1", "b=2"}}, parent, ""},
		{"ControlInState", nats.Header{"traceparent": {parent}, "tracestate": {"a=1\n"}}, parent, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for range 50 { // map order varies between calls
				p, s := Of(tt.h)
				if p != tt.parent || s != tt.state {
					t.Fatalf("Of = %q, %q; want %q, %q", p, s, tt.parent, tt.state)
				}
			}
		})
	}
}
