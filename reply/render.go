package reply

import (
	"encoding/json"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/passkeys/worker/event"
	"github.com/passkeys/worker/passkey"
)

// errorDetailType is the @type of the detail ZITADEL attaches to an error.
const errorDetailType = "type.googleapis.com/zitadel.v1.ErrorDetail"

// Wire is an encoded answer: the body and, for an error, the values of the
// Nats-Service-Error-Code and Nats-Service-Error headers.
type Wire struct {
	// Code is the gRPC code of an error reply; 0 for a success.
	Code      passkey.Code
	Body      []byte
	ErrorCode string
	ErrorText string
}

// IsError reports whether r is an error reply.
func (r Wire) IsError() bool { return r.ErrorCode != "" }

// Header is r's NATS header: the service error headers, or nil for a success.
func (r Wire) Header() nats.Header {
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

// Render encodes a command's answer as ZITADEL's gateway would. The bytes
// are a function of the answer alone, so a repeat, rendered from the stored
// answer, gets the first reply byte for byte; TestSuccessReplyShape and
// TestErrorReplyShape pin them.
func Render(a passkey.Answer) Wire {
	if a.Err != nil {
		return Error(a.Err)
	}
	body, _ := json.Marshal(struct { // a struct of strings cannot fail to encode
		Details objectDetails `json:"details"`
	}{objectDetails{
		Sequence:      strconv.FormatUint(a.Sequence, 10),
		CreationDate:  event.Timestamp(a.CreationDate),
		ChangeDate:    event.Timestamp(a.ChangeDate),
		ResourceOwner: a.ResourceOwner,
	}})
	return Wire{Body: body}
}

// Error encodes e as google.rpc.Status, the way ZITADEL's gateway does,
// with the HTTP status grpc-gateway maps its code to.
func Error(e *passkey.Error) Wire {
	msg := e.Message + " (" + e.ID + ")"
	body, _ := json.Marshal(statusBody{ // a struct of strings cannot fail to encode
		Code:    e.Code,
		Message: msg,
		Details: []errorDetail{{Type: errorDetailType, ID: e.ID, Message: e.Message}},
	})
	httpStatus, _ := e.Code.Status()
	return Wire{Code: e.Code, Body: body, ErrorCode: strconv.Itoa(httpStatus), ErrorText: msg}
}

type objectDetails struct {
	Sequence      string `json:"sequence"`
	CreationDate  string `json:"creationDate"`
	ChangeDate    string `json:"changeDate"`
	ResourceOwner string `json:"resourceOwner"`
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

// List encodes the passkeys of user u.
func List(u *passkey.User, keys []passkey.Passkey) Wire {
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
		Timestamp:         event.Timestamp(u.ChangeDate),
	}, result})
	return Wire{Body: body}
}
