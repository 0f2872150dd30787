// Package trust decides which keys judge a command: control entries, which
// the operator writes into every partition of stream PASSKEYS (`worker
// provision --jwks`, on partition.ControlSubject), each in force for the
// partition's commands after it. A command is judged by the last control
// entry before it in its partition: a position in the stream, not a time,
// so every worker, every replay and every rebuild judges it alike, with no
// clock but the command's own stream timestamp (its token's exp and nbf).
//
// A command stored before its partition's first entry is judged by that
// entry's Before (the key history of the version before, by the command's
// stream timestamp, as that version judged it), or, with none, by the
// entry itself.
package trust

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/passkeys/worker/auth"
)

// Entry is one control entry, as stored in the stream (JSON).
type Entry struct {
	Issuer   string             `json:"issuer"`
	Audience string             `json:"audience"`
	Keys     jose.JSONWebKeySet `json:"jwks"`
	// Before, in a partition's first entry only, are the key sets of the
	// version before's key history, each in force from its time on (the
	// first also before it).
	Before []Era `json:"before,omitempty"`
	// Verify is the rule its EdDSA signatures are checked by (absent: the
	// versions before's, auth.RuleRFC8032).
	Verify auth.Rule `json:"verify,omitempty"`
	// Rules is the version of the rules that judge the commands after it
	// (absent: 1, the versions before's; at most RulesVersion).
	Rules int `json:"rules,omitempty"`

	set    *auth.KeySet
	before []*auth.KeySet
}

// Era is a key set of the version before's key history, in force from
// From on.
type Era struct {
	From     time.Time          `json:"from"`
	Issuer   string             `json:"issuer"`
	Audience string             `json:"audience"`
	Keys     jose.JSONWebKeySet `json:"jwks"`
}

// NewEntry is the entry that trusts keys, for tokens of issuer and
// audience, checked by rule.
func NewEntry(keys jose.JSONWebKeySet, issuer, audience string, rule auth.Rule) (*Entry, error) {
	set, err := auth.NewKeySet(keys, issuer, audience, rule)
	if err != nil {
		return nil, err
	}
	return &Entry{Issuer: issuer, Audience: audience, Keys: keys, Verify: rule, set: set}, nil
}

// RulesVersion is the newest version of the rules this worker knows:
//   - 1: the rules of the versions before;
//   - 2: also a command stored with a Nats-TTL header is refused
//     (REQUEST-HEADER-INVALID): the stream would drop it before its
//     outcome expires, and a rebuild from the stream would miss its change.
//
// A new version is written (`worker provision --rules N`) once every worker
// runs a version that knows it: it judges the commands after its entry, and
// a rebuild or replay judges the commands before it by the version before.
const RulesVersion = 2

// ErrNewer is Parse's error for an entry of a newer version: a field or a
// rule this one does not know. Its partition waits, with this error, for
// a worker that knows it, rather than judge by other rules (the operator
// writes such an entry after every worker runs the version that knows it).
var ErrNewer = errors.New("the control entry is of a newer version of the worker")

// Parse reads a control entry, refusing one that trusts nothing usable:
// a key set that is empty or holds anything but public keys of the
// allowed algorithms, or no issuer or audience. The same body parses the
// same way on every worker.
func Parse(body []byte) (*Entry, error) {
	var e Entry
	strict := json.NewDecoder(bytes.NewReader(body))
	strict.DisallowUnknownFields()
	if err := strict.Decode(&e); err != nil || strict.More() {
		// Not even read leniently: no key set. Read so: a field this
		// version does not know.
		if lerr := json.Unmarshal(body, &Entry{}); lerr != nil {
			return nil, lerr
		}
		return nil, fmt.Errorf("%w: %v", ErrNewer, err)
	}
	if !e.Verify.Known() {
		return nil, fmt.Errorf("%w: verification rule %q", ErrNewer, e.Verify)
	}
	if e.Rules < 0 || e.Rules > RulesVersion {
		return nil, fmt.Errorf("%w: rules version %d", ErrNewer, e.Rules)
	}
	var err error
	if e.set, err = auth.NewKeySet(e.Keys, e.Issuer, e.Audience, e.Verify); err != nil {
		return nil, err
	}
	for _, era := range e.Before {
		ks, err := auth.NewKeySet(era.Keys, era.Issuer, era.Audience, auth.RuleRFC8032)
		if err != nil {
			return nil, err
		}
		e.before = append(e.before, ks)
	}
	return &e, nil
}

// Encode is the body of e, checked as Parse checks it.
func (e *Entry) Encode() ([]byte, error) {
	raw, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	if _, err := Parse(raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// KeySet is the set e puts in force.
func (e *Entry) KeySet() *auth.KeySet { return e.set }

// For is the key set that judges a command stored at at: e's own, or,
// when the command comes before e (e is its partition's first entry), the
// era of Before in force at at.
func (e *Entry) For(before bool, at time.Time) *auth.KeySet {
	if !before || len(e.before) == 0 {
		return e.set
	}
	i := len(e.Before) - 1
	for i > 0 && e.Before[i].From.After(at) {
		i--
	}
	return e.before[i]
}

// RulesFor is the rules version that judges a command before e (a
// partition's first entry with eras: 1, as the version before judged it)
// or after it.
func (e *Entry) RulesFor(before bool) int {
	if before && len(e.before) > 0 {
		return 1
	}
	return max(e.Rules, 1)
}

// Same tells whether e trusts exactly what o does, under the same rules
// (Before aside).
func (e *Entry) Same(o *Entry) bool {
	return e != nil && o != nil && e.KeySet() != nil && o.KeySet() != nil && e.set.ID == o.set.ID &&
		max(e.Rules, 1) == max(o.Rules, 1)
}
