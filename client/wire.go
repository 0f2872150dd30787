package client

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/passkeys/worker/passkey"
)

// Details is what a change did: the answer to Remove and Sync.
type Details struct {
	// Sequence is the user's own event sequence after this change: it
	// grows by exactly 1 with every change applied to the user.
	Sequence uint64
	// CreationDate is when the user's first change was stored.
	CreationDate time.Time
	// ChangeDate is when the command that made this change was stored (its
	// JetStream timestamp): a repeat and a replay give the same.
	ChangeDate time.Time
	// ResourceOwner is the user's organisation.
	ResourceOwner string
}

// State is a passkey's state.
type State string

// The states a passkey can be in.
const (
	StateReady    State = "ready"
	StateNotReady State = "not_ready"
)

// Passkey is one of a user's passkeys.
type Passkey struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	State State  `json:"state"`
}

// List is the answer to List: the user's passkeys as of the user's
// ProcessedSequence.
type List struct {
	Passkeys []Passkey
	// ProcessedSequence is the user's sequence the list reflects.
	ProcessedSequence uint64
	// Timestamp is the ChangeDate of that sequence's change.
	Timestamp time.Time
}

// User is a user's whole login-method snapshot, as Sync sets it.
type User struct {
	ID            string    `json:"-"`
	ResourceOwner string    `json:"resourceOwner"`
	Password      bool      `json:"password"`
	IDPLinks      []string  `json:"idpLinks"`
	Passkeys      []Passkey `json:"passkeys"`
	U2F           []string  `json:"u2f"`
	OTP           bool      `json:"otp"`
}

// removeBody is a removal's body.
type removeBody struct {
	TokenID string `json:"tokenId"`
	Force   bool   `json:"force"`
}

// quoteLen is how much of an unreadable reply an error quotes.
const quoteLen = 64

// badReply is the error of a reply that does not follow the contract.
func badReply(data []byte, why string) error {
	q := data
	if len(q) > quoteLen {
		q = q[:quoteLen]
	}
	return fmt.Errorf("%w: %s: %q", ErrBadReply, why, q)
}

// readError reads an error reply (one with Nats-Service-Error-Code): the
// google.rpc.Status body with its ZITADEL ErrorDetail.
func readError(m *nats.Msg) error {
	status, err := strconv.Atoi(m.Header.Get(micro.ErrorCodeHeader))
	if err != nil {
		return badReply([]byte(m.Header.Get(micro.ErrorCodeHeader)), "Nats-Service-Error-Code is not a number")
	}
	var body struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
		Details []struct {
			ID      string `json:"id"`
			Message string `json:"message"`
		} `json:"details"`
	}
	if err := json.Unmarshal(m.Data, &body); err != nil {
		return badReply(m.Data, "an error reply that is not google.rpc.Status JSON")
	}
	if body.Code == nil || *body.Code <= 0 || len(body.Details) != 1 || body.Details[0].ID == "" {
		return badReply(m.Data, "an error reply without its code and one detail with an id")
	}
	if want, _ := passkey.Code(*body.Code).Status(); status != want {
		return badReply(m.Data, "an error reply whose Nats-Service-Error-Code is not its code's HTTP status")
	}
	return &Error{Code: *body.Code, ID: body.Details[0].ID, Message: body.Details[0].Message, HTTPStatus: status}
}

// readDetails reads a success reply of a change.
func readDetails(data []byte) (Details, error) {
	var body struct {
		Details *struct {
			Sequence      string `json:"sequence"`
			CreationDate  string `json:"creationDate"`
			ChangeDate    string `json:"changeDate"`
			ResourceOwner string `json:"resourceOwner"`
		} `json:"details"`
	}
	if err := json.Unmarshal(data, &body); err != nil || body.Details == nil {
		return Details{}, badReply(data, "not a {\"details\": ...} reply")
	}
	d := body.Details
	seq, err1 := decimal(d.Sequence)
	created, err2 := timestamp(d.CreationDate)
	changed, err3 := timestamp(d.ChangeDate)
	if err1 != nil || err2 != nil || err3 != nil || seq == 0 || d.ResourceOwner == "" {
		return Details{}, badReply(data, "details without a sequence, dates or resourceOwner")
	}
	return Details{Sequence: seq, CreationDate: created, ChangeDate: changed, ResourceOwner: d.ResourceOwner}, nil
}

// listStates maps the list reply's states (ZITADEL's AuthFactorState).
var listStates = map[string]State{"AUTH_FACTOR_STATE_READY": StateReady, "AUTH_FACTOR_STATE_NOT_READY": StateNotReady}

// readList reads a list reply.
func readList(data []byte) (List, error) {
	var body struct {
		Details *struct {
			TotalResult       string `json:"totalResult"`
			ProcessedSequence string `json:"processedSequence"`
			Timestamp         string `json:"timestamp"`
		} `json:"details"`
		Result []struct {
			ID    string `json:"id"`
			Name  string `json:"name"`
			State string `json:"state"`
		} `json:"result"`
	}
	if err := json.Unmarshal(data, &body); err != nil || body.Details == nil {
		return List{}, badReply(data, "not a list reply")
	}
	d := body.Details
	total, err1 := decimal(d.TotalResult)
	seq, err2 := decimal(d.ProcessedSequence)
	ts, err3 := timestamp(d.Timestamp)
	if err1 != nil || err2 != nil || err3 != nil || total != uint64(len(body.Result)) {
		return List{}, badReply(data, "list details that do not match the result")
	}
	l := List{Passkeys: make([]Passkey, len(body.Result)), ProcessedSequence: seq, Timestamp: ts}
	for i, r := range body.Result {
		state, ok := listStates[r.State]
		if !ok || r.ID == "" {
			return List{}, badReply(data, "a listed passkey without an id or with an unknown state")
		}
		l.Passkeys[i] = Passkey{ID: r.ID, Name: r.Name, State: state}
	}
	return l, nil
}

// ReplyError reads a reply the worker sent to a command published straight
// into stream PASSKEYS with a Reply-To (what a batch publisher does): nil
// for a success, the *Error of a refusal, or an error wrapping ErrBadReply.
func ReplyError(m *nats.Msg) error {
	if m.Header.Get(micro.ErrorCodeHeader) == "" {
		if _, err := readDetails(m.Data); err != nil {
			return err
		}
		return nil
	}
	return readError(m)
}

// decimal reads a proto3 JSON uint64: decimal digits, no sign, no leading zero.
func decimal(s string) (uint64, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a decimal number", s)
	}
	return strconv.ParseUint(s, 10, 64)
}

// timestamp reads a proto3 JSON Timestamp: RFC 3339 in UTC, with "Z".
func timestamp(s string) (time.Time, error) {
	if !strings.HasSuffix(s, "Z") {
		return time.Time{}, fmt.Errorf("%q is not a UTC timestamp", s)
	}
	return time.Parse(time.RFC3339Nano, s)
}
