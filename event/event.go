// Package event is what downstream systems are told of an applied change:
// a CloudEvents 1.0 document in JSON structured mode, as docs/contract.md
// "Removal events" shows. A removal is ZITADEL's own event type for it, so
// handlers written for ZITADEL's events fit; a sync is passkeys.user.synced.
// An event's id is <userId>:<sequence>, the same however often the change is
// replayed, so a second publication is dropped as a duplicate. No event
// holds a token.
package event

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/passkeys/worker/passkey"
)

// Event types.
const (
	TypeRemoved = "user.human.passwordless.token.removed"
	TypeSynced  = "passkeys.user.synced"
)

// Source is every event's source.
const Source = "passkeys"

// Actor is who made a change: the token's sub and the authority it acted
// with (self, admin or system).
type Actor struct {
	Sub  string `json:"sub"`
	Role string `json:"role"`
}

// ActorOf names p's role in a change of user userID.
func ActorOf(p passkey.Principal, userID string) Actor {
	switch {
	case p.System:
		return Actor{Sub: p.Subject, Role: "system"}
	case p.Subject == userID:
		return Actor{Sub: p.Subject, Role: "self"}
	default:
		return Actor{Sub: p.Subject, Role: "admin"}
	}
}

// Remaining is what a user keeps after a removal.
type Remaining struct {
	Passkeys     int `json:"passkeys"`
	FirstFactors int `json:"firstFactors"`
}

type removedData struct {
	UserID        string    `json:"userId"`
	ResourceOwner string    `json:"resourceOwner"`
	TokenID       string    `json:"tokenId"`
	Name          string    `json:"name"`
	Forced        bool      `json:"forced"`
	Actor         Actor     `json:"actor"`
	Sequence      string    `json:"sequence"`
	Remaining     Remaining `json:"remaining"`
	MsgID         string    `json:"msgId,omitempty"`
}

type syncedData struct {
	UserID        string `json:"userId"`
	ResourceOwner string `json:"resourceOwner"`
	Actor         Actor  `json:"actor"`
	Sequence      string `json:"sequence"`
	Created       bool   `json:"created"`
	Passkeys      int    `json:"passkeys"`
	FirstFactors  int    `json:"firstFactors"`
	MsgID         string `json:"msgId,omitempty"`
}

type document struct {
	SpecVersion     string `json:"specversion"`
	ID              string `json:"id"`
	Source          string `json:"source"`
	Type            string `json:"type"`
	Subject         string `json:"subject"`
	Time            string `json:"time"`
	DataContentType string `json:"datacontenttype"`
	// CloudEvents' distributed tracing extension: the trace of the command
	// that made the change.
	TraceParent string `json:"traceparent,omitempty"`
	TraceState  string `json:"tracestate,omitempty"`
	Data        any    `json:"data"`
}

// Trace is the W3C trace context of the command that made a change
// (traceprop.Of of its headers): empty for a command that carried none.
type Trace struct {
	Parent, State string
}

// TraceOf reads the trace context of an event document; empty when it
// has none.
func TraceOf(doc []byte) Trace {
	if !bytes.Contains(doc, []byte(`"traceparent":`)) {
		return Trace{} // most events: no parse
	}
	var d struct {
		TraceParent string `json:"traceparent"`
		TraceState  string `json:"tracestate"`
	}
	_ = json.Unmarshal(doc, &d) // our own rendering: a failure leaves it empty
	return Trace{Parent: d.TraceParent, State: d.TraceState}
}

// ID is the id of the event of user userID's change to sequence seq.
func ID(userID string, seq uint64) string { return userID + ":" + strconv.FormatUint(seq, 10) }

// ParseID reads an event id: its user and sequence.
func ParseID(id string) (userID string, seq uint64, ok bool) {
	i := strings.LastIndexByte(id, ':')
	if i <= 0 {
		return "", 0, false
	}
	seq, err := strconv.ParseUint(id[i+1:], 10, 64)
	return id[:i], seq, err == nil
}

// Removed is the event of the removal of passkey removed that left the user
// as after; msgID is the caller's Nats-Msg-Id ("" for none), tr the
// command's trace.
func Removed(after *passkey.User, removed passkey.Passkey, forced bool, actor Actor, msgID string, tr Trace) []byte {
	return render(after, TypeRemoved, tr, removedData{
		UserID: after.ID, ResourceOwner: after.ResourceOwner, TokenID: removed.ID, Name: removed.Name, Forced: forced,
		Actor: actor, Sequence: strconv.FormatUint(after.Sequence, 10), MsgID: msgID,
		Remaining: Remaining{Passkeys: len(after.Passkeys), FirstFactors: after.FirstFactors()},
	})
}

// Synced is the event of a sync that left the user as after.
func Synced(after *passkey.User, actor Actor, msgID string, tr Trace) []byte {
	return render(after, TypeSynced, tr, syncedData{
		UserID: after.ID, ResourceOwner: after.ResourceOwner, Actor: actor, Sequence: strconv.FormatUint(after.Sequence, 10),
		Created: after.Sequence == 1, Passkeys: len(after.Passkeys), FirstFactors: after.FirstFactors(), MsgID: msgID,
	})
}

func render(after *passkey.User, typ string, tr Trace, data any) []byte {
	raw, _ := json.Marshal(document{ // a struct of strings and numbers cannot fail to encode
		SpecVersion: "1.0", ID: ID(after.ID, after.Sequence), Source: Source, Type: typ, Subject: after.ID,
		Time: Timestamp(after.ChangeDate), DataContentType: "application/json", TraceParent: tr.Parent, TraceState: tr.State, Data: data,
	})
	return raw
}

// Timestamp writes t as proto3 JSON writes a google.protobuf.Timestamp: UTC,
// "Z", and 0, 3, 6 or 9 fractional digits, the fewest that hold t exactly
// (the replies' changeDate is written the same way).
func Timestamp(t time.Time) string {
	t = t.UTC()
	s := t.Format("2006-01-02T15:04:05.000000000")
	switch ns := t.Nanosecond(); {
	case ns == 0:
		s = strings.TrimSuffix(s, ".000000000")
	case ns%1e6 == 0:
		s = s[:len(s)-6]
	case ns%1e3 == 0:
		s = s[:len(s)-3]
	}
	return s + "Z"
}
