// Package handler adapts the passkey rules to NATS: it decodes commands from
// the PASSKEYS stream and requests to the passkeys micro service, runs them
// against the store, and encodes every answer in ZITADEL's shapes. It is the
// one place where an error becomes a wire body and Nats-Service-Error headers.
package handler

import (
	"encoding/binary"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/passkeys/worker/internal/binrec"
	"github.com/passkeys/worker/passkey"
)

// errorDetailType is the @type of the detail ZITADEL attaches to an error.
const errorDetailType = "type.googleapis.com/zitadel.v1.ErrorDetail"

// Reply is an encoded answer: the body and, for an error, the values of the
// Nats-Service-Error-Code and Nats-Service-Error headers.
type Reply struct {
	// Code is the gRPC code of an error reply; 0 for a success.
	Code      passkey.Code
	Body      []byte
	ErrorCode string
	ErrorText string
	// Record is the compact form kept as a command's outcome: the few
	// values Body and the headers are a pure function of (see
	// ReplyFromRecord), a fifth of the size. Empty for replies that are
	// never kept.
	Record []byte
}

// IsError reports whether r is an error reply.
func (r Reply) IsError() bool { return r.ErrorCode != "" }

// Header is r's NATS header: the service error headers, or nil for a success.
func (r Reply) Header() nats.Header {
	if !r.IsError() {
		return nil
	}
	return nats.Header{micro.ErrorCodeHeader: {r.ErrorCode}, micro.ErrorHeader: {r.ErrorText}}
}

type errorDetail struct {
	Type    string `json:"@type"`
	ID      string `json:"id"`
	Message string `json:"message"`
}

type statusBody struct {
	Code    passkey.Code  `json:"code"`
	Message string        `json:"message"`
	Details []errorDetail `json:"details"`
}

// ErrorReply encodes e as google.rpc.Status, the way ZITADEL's gateway does.
func ErrorReply(e *passkey.Error) Reply {
	msg := e.Message + " (" + e.ID + ")"
	body, _ := json.Marshal(statusBody{ // a struct of strings cannot fail to encode
		Code:    e.Code,
		Message: msg,
		Details: []errorDetail{{Type: errorDetailType, ID: e.ID, Message: e.Message}},
	})
	rec := append([]byte{recordErrorV1}, byte(e.Code))
	rec = binrec.AppendString(rec, e.ID)
	rec = binrec.AppendString(rec, e.Message)
	return Reply{Code: e.Code, Body: body, ErrorCode: strconv.Itoa(e.Code.HTTPStatus()), ErrorText: msg, Record: rec}
}

type objectDetails struct {
	Sequence      string `json:"sequence"`
	CreationDate  string `json:"creationDate"`
	ChangeDate    string `json:"changeDate"`
	ResourceOwner string `json:"resourceOwner"`
}

// SuccessReply encodes the details of a change that left the user as u.
func SuccessReply(u *passkey.User) Reply {
	body, _ := json.Marshal(struct {
		Details objectDetails `json:"details"`
	}{objectDetails{
		Sequence:      strconv.FormatUint(u.Sequence, 10),
		CreationDate:  Timestamp(u.CreationDate),
		ChangeDate:    Timestamp(u.ChangeDate),
		ResourceOwner: u.ResourceOwner,
	}})
	rec := binary.AppendUvarint([]byte{recordSuccessV1}, u.Sequence)
	rec = binrec.AppendTime(rec, u.CreationDate)
	rec = binrec.AppendTime(rec, u.ChangeDate)
	rec = binrec.AppendString(rec, u.ResourceOwner)
	return Reply{Body: body, Record: rec}
}

// Kinds of reply record. The bytes a record expands to are part of the
// contract (a repeat returns the first reply byte for byte), so the shapes
// of SuccessReply and ErrorReply are pinned by tests, and a change to either
// needs a new record kind that keeps expanding old records the old way.
const (
	recordSuccessV1 byte = 1
	recordErrorV1   byte = 2
)

// ReplyFromRecord rebuilds the reply a record was made from.
func ReplyFromRecord(rec []byte) (Reply, error) {
	r := binrec.NewReader(rec)
	switch r.Byte() {
	case recordSuccessV1:
		u := &passkey.User{Sequence: r.Uvarint(), CreationDate: r.Time(), ChangeDate: r.Time(), ResourceOwner: r.String()}
		if err := r.Done(); err != nil {
			return Reply{}, err
		}
		return SuccessReply(u), nil
	case recordErrorV1:
		e := &passkey.Error{Code: passkey.Code(r.Byte()), ID: r.String(), Message: r.String()}
		if err := r.Done(); err != nil {
			return Reply{}, err
		}
		return ErrorReply(e), nil
	default:
		return Reply{}, binrec.ErrCorrupt
	}
}

type listDetails struct {
	TotalResult       string `json:"totalResult"`
	ProcessedSequence string `json:"processedSequence"`
	Timestamp         string `json:"timestamp"`
}

type listedPasskey struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	State string `json:"state"`
}

// ListReply encodes the passkeys of user u.
func ListReply(u *passkey.User, keys []passkey.Passkey) Reply {
	result := make([]listedPasskey, len(keys))
	for i, k := range keys {
		state := "AUTH_FACTOR_STATE_NOT_READY"
		if k.State == passkey.StateReady {
			state = "AUTH_FACTOR_STATE_READY"
		}
		result[i] = listedPasskey{ID: k.ID, Name: k.Name, State: state}
	}
	body, _ := json.Marshal(struct {
		Details listDetails     `json:"details"`
		Result  []listedPasskey `json:"result"`
	}{listDetails{
		TotalResult:       strconv.Itoa(len(keys)),
		ProcessedSequence: strconv.FormatUint(u.Sequence, 10),
		Timestamp:         Timestamp(u.ChangeDate),
	}, result})
	return Reply{Body: body}
}

// Timestamp writes t as proto3 JSON writes a google.protobuf.Timestamp: UTC,
// "Z", and 0, 3, 6 or 9 fractional digits, the fewest that hold t exactly.
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
