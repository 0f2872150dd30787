package chaos

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Kinds of operation a client makes.
const (
	OpSync   = "sync"
	OpRemove = "remove"
	OpList   = "list"
)

// Statuses of an operation's result.
const (
	// StatusOK is a success reply: a change applied (its sequence) or a list.
	StatusOK = "ok"
	// StatusRefused is an error reply that says the command was judged and
	// changed nothing (PASSKEY-LAST, PASSKEY-NOT-FOUND, an INTERNAL after
	// retries ran out).
	StatusRefused = "refused"
	// StatusUnknown is no answer that tells: the call's time ran out, or it
	// was answered UNAVAILABLE to the end. The change may or may not have
	// been applied; asking again with the same Nats-Msg-Id tells.
	StatusUnknown = "unknown"
)

// Op is one call a client made and what came of it. Times are nanoseconds
// since the campaign's start, on the campaign's monotonic clock.
type Op struct {
	Client int    `json:"client"`
	Kind   string `json:"kind"`
	User   string `json:"user"`
	// PK is the passkey a removal takes.
	PK string `json:"pk,omitempty"`
	// Set is what a sync sets: the passkeys' ids (all ready), sorted.
	Set []string `json:"set,omitempty"`
	// Password is whether a sync gives the user a password.
	Password bool   `json:"password,omitempty"`
	MsgID    string `json:"msgId,omitempty"`
	Call     int64  `json:"call"`
	Return   int64  `json:"return"`
	Result   Result `json:"result"`
	// Resolved: the result came from asking again with the same
	// Nats-Msg-Id at the end (the call itself got no answer that told);
	// GaveUp is when the call itself ended, Return when the asking again
	// did.
	Resolved bool  `json:"resolved,omitempty"`
	GaveUp   int64 `json:"gaveUp,omitempty"`
}

// Result is what an operation got back.
type Result struct {
	Status string `json:"status"`
	// ErrID is a refusal's stable id.
	ErrID string `json:"errId,omitempty"`
	// Seq is a change's sequence, or a list's processed sequence.
	Seq uint64 `json:"seq,omitempty"`
	// Passkeys is a list's passkey ids, sorted.
	Passkeys []string `json:"passkeys,omitempty"`
	// Date is a change's changeDate, or a list's timestamp (the changeDate
	// of its processed sequence's change), RFC 3339.
	Date string `json:"date,omitempty"`
	// Body is a change's reply, byte for byte.
	Body []byte `json:"body,omitempty"`
	// Err is what the client said when the status is unknown.
	Err string `json:"err,omitempty"`
}

// isChange tells whether the operation asks for a change (it has a
// Nats-Msg-Id and a stored outcome).
func (o *Op) isChange() bool { return o.Kind != OpList }

// history is every operation of a campaign, appended to by the clients.
type history struct {
	mu  sync.Mutex
	ops []*Op
}

func (h *history) add(op *Op) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// snapshot is a copy of the operations so far, in the order they ended.
func (h *history) snapshot() []*Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ops)
}

// writeHistory writes ops as JSON lines.
func writeHistory(path string, ops []*Op) error {
	var b strings.Builder
	for _, op := range ops {
		raw, err := json.Marshal(op)
		if err != nil {
			return err
		}
		b.Write(raw)
		b.WriteByte('\n')
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// CheckHistory checks a history that a failed campaign wrote
// (history.jsonl) again, as the campaign did.
func CheckHistory(path string, timeout time.Duration) (*Verdict, error) {
	ops, err := readHistory(path)
	if err != nil {
		return nil, err
	}
	return check(ops, timeout), nil
}

// readHistory reads what writeHistory wrote.
func readHistory(path string) ([]*Op, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ops []*Op
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		if line == "" {
			continue
		}
		op := &Op{}
		if err := json.Unmarshal([]byte(line), op); err != nil {
			return nil, err
		}
		ops = append(ops, op)
	}
	return ops, nil
}
