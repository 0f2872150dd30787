package command

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/passkeys/worker/event"
	"github.com/passkeys/worker/internal/traceprop"
	"github.com/passkeys/worker/passkey"
)

// Header names of the contract.
const (
	HeaderAuthorization = "Authorization"
	HeaderReplyTo       = "Reply-To"
	HeaderContentType   = "Content-Type"
	HeaderMsgID         = "Nats-Msg-Id" // JetStream's idempotency key, matched exactly as spelt
	HeaderTTL           = "Nats-TTL"    // JetStream's per-message TTL: refused from rules version 2 on
)

// DefaultRetention is how long an outcome is kept.
const DefaultRetention = 7 * 24 * time.Hour

// Command is one stored command, as read from the stream.
type Command struct {
	Subject   string
	Header    Header
	Body      []byte
	StreamSeq uint64
	// Timestamp is when the stream stored the command: the command's
	// changeDate, and the time its token is judged at.
	Timestamp time.Time
	// Control tells that the message is its partition's control entry
	// (trust), not a command: Body is the entry.
	Control bool

	traceOnce sync.Once
	trace     event.Trace
}

// Trace is the W3C trace context the command carries (traceprop.Of of its
// headers), which its reply and its event repeat: read from the headers
// once, whoever asks first.
func (c *Command) Trace() event.Trace {
	c.traceOnce.Do(func() {
		parent, state := traceprop.Of(c.Header)
		c.trace = event.Trace{Parent: parent, State: state}
	})
	return c.trace
}

// Header holds a command's headers, as NATS carries them (a nats.Header
// converts to it as it is).
type Header map[string][]string

// ValuesFold collects the values of header name under any spelling of its
// case: NATS headers are case-sensitive, callers are not always careful, and
// a second spelling must not slip past the one-value checks.
//
// The result may share the header's own slice: callers only read it.
func (h Header) ValuesFold(name string) []string {
	var vals []string
	found := false
	for k, v := range h {
		if len(k) != len(name) || !strings.EqualFold(k, name) {
			continue
		}
		if !found {
			vals, found = v, true // one spelling, as nearly always: no copy
			continue
		}
		vals = append(slices.Clip(vals), v...) // a second spelling: a copy of both
	}
	return vals
}

// MsgIDKey is the outcome key of a command that carries Nats-Msg-Id id.
func MsgIDKey(id string) []byte { return []byte("m:" + id) }

// CheckMsgIDs checks the Nats-Msg-Id headers of a command or request: at
// most one, and that one bounded (passkey.ValidateMsgID).
//
// Errors: INVALID_ARGUMENT (REQUEST-HEADER-INVALID).
func CheckMsgIDs(ids []string, max int) error {
	switch len(ids) {
	case 0:
		return nil
	case 1:
		return passkey.ValidateMsgID(ids[0], max)
	default:
		return passkey.ErrOneMsgID
	}
}

// maxReplyToLen bounds a reply subject: it is logged and kept in dead
// letters. An inbox is far shorter.
const maxReplyToLen = 256

// CheckReplyTo refuses a Reply-To the worker must not publish to: more than
// one, over 256 bytes, a wildcard, or a subject in the system, JetStream or
// passkeys namespaces. The worker's connection may publish to the
// JetStream API and into the streams, so a Reply-To of
// $JS.API.STREAM.PURGE.PASSKEYS would otherwise turn every caller into an
// operator.
//
// Errors: INVALID_ARGUMENT (REQUEST-HEADER-INVALID).
func CheckReplyTo(values []string) error {
	switch len(values) {
	case 0:
		return nil
	case 1:
		s := values[0]
		if s != "" && len(s) <= maxReplyToLen && !strings.HasPrefix(s, "$") && !strings.HasPrefix(s, "passkeys.") &&
			!strings.ContainsAny(s, "*> \t\r\n") && !strings.HasPrefix(s, ".") && !strings.HasSuffix(s, ".") && !strings.Contains(s, "..") {
			return nil
		}
	}
	return passkey.ErrReplyTo
}

// maxLogValue bounds what of a caller-chosen string (a subject, a reply
// subject, a Nats-Msg-Id) goes into a log line.
const maxLogValue = 128

// Truncate shortens a caller-chosen string for a log line.
func Truncate(s string) string {
	if len(s) <= maxLogValue {
		return s
	}
	return s[:maxLogValue] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}
