package handler

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/binrec"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
)

// Subject prefixes of the contract.
const (
	CommandPrefix  = "passkeys.cmd"
	EndpointPrefix = "passkeys"
)

// Header names of the contract.
const (
	HeaderAuthorization = "Authorization"
	HeaderReplyTo       = "Reply-To"
	HeaderContentType   = "Content-Type"
	HeaderMsgID         = nats.MsgIdHdr
)

// DefaultRetention is how long an outcome record is kept.
const DefaultRetention = 7 * 24 * time.Hour

// Command is one stored command, as read from the stream.
type Command struct {
	Subject   string
	Header    nats.Header
	Body      []byte
	StreamSeq uint64
	// Timestamp is when the stream stored the command: the command's
	// changeDate, and the time its token is judged at.
	Timestamp time.Time
}

// Result is what became of a command.
type Result struct {
	// Reply is the answer to send; empty when Transient is set.
	Reply Reply
	// Repeat tells that Reply is the stored outcome of an earlier delivery.
	Repeat bool
	// Transient is set when the command could not be processed now and
	// should be retried; nothing of it was committed.
	Transient error
	// UserID and Op are what the subject named, when it could be parsed.
	UserID string
	Op     passkey.Op
}

// Processor applies batches of commands to the store. It holds no
// transport: the consumer adapter feeds it and sends what it returns.
type Processor struct {
	Store     *storage.Store
	Verifier  *auth.Verifier
	Retention time.Duration
	// Now is the clock for outcome expiry; tests pin it.
	Now func() time.Time
	Log zerolog.Logger

	// beforeDecide, when set, runs before each rule: tests use it to make
	// a command poison.
	beforeDecide func(*Command)
	// breakTx, when set, runs as each command is applied; an error it
	// returns fails the whole transaction, as a store error would: tests
	// use it for a command that breaks every commit it is part of.
	breakTx func(*Command) error
}

// prepared is a command decoded and authenticated before the transaction,
// so that the expensive work (signatures, JSON) does not hold the write lock.
type prepared struct {
	cmd *Command
	// owner is the user whose records hold the command's outcome: the user
	// the subject names, or "" when it names none validly.
	owner string
	// key is the outcome's key: the Nats-Msg-Id scoped to the verified
	// principal (so a principal's ids are its own, whether it published
	// into the stream with a plain id or through an endpoint, which scopes
	// it), the plain id when no token verifies, or the stream sequence.
	key []byte
	// plainKey is the key under the id as sent, where a version before ids
	// were scoped kept its outcome; nil when it is key.
	plainKey  []byte
	op        passkey.Op
	userID    string
	remove    passkey.RemoveRequest
	sync      passkey.SyncRequest
	principal passkey.Principal
	// fingerprint identifies the command (passkey.Fingerprint).
	fingerprint []byte
	refusal     error // a definitive refusal found before reading the store
	broken      error // preparing it panicked: retry it, alone
}

// Process applies cmds, in order, in one transaction, and returns a result
// for each. A failure of the store fails the whole batch: it returns the
// error and nothing was committed. A panic while deciding one command makes
// only that command transient.
func (p *Processor) Process(cmds []*Command) ([]Result, error) {
	preps := make([]prepared, len(cmds))
	for i, c := range cmds {
		preps[i] = p.prepareSafely(c)
	}
	results := make([]Result, len(cmds))
	err := p.Store.Update(func(tx *storage.Tx) error {
		clear(results)
		expires := p.Now().Add(p.Retention)
		var applied uint64
		for i := range preps {
			r, err := p.apply(tx, &preps[i], expires)
			if err != nil {
				return err
			}
			results[i] = r
			if r.Transient == nil {
				applied = max(applied, preps[i].cmd.StreamSeq)
			}
		}
		return tx.NoteAppliedSeq(applied)
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// ProcessIsolating is Process for a batch whose commit keeps failing. It
// applies the batch in ever smaller parts, in stream order, so that a
// command that breaks every transaction it is part of is found and fails
// alone (its Result is Transient), while the commands batched with it are
// applied. A command of a user with an earlier command that failed this way
// is held back (Transient) too, so it never overtakes that command. When the
// store itself is failing (a full disk), every part fails and every command
// is Transient, as with Process.
func (p *Processor) ProcessIsolating(cmds []*Command) []Result {
	results := make([]Result, len(cmds))
	idx := make([]int, len(cmds))
	for i := range idx {
		idx[i] = i
	}
	p.isolate(cmds, idx, results, map[string]bool{})
	return results
}

// isolate applies the commands cmds[idx...] and writes their results;
// failed holds the users with a command that failed.
func (p *Processor) isolate(cmds []*Command, idx []int, results []Result, failed map[string]bool) {
	run := make([]*Command, 0, len(idx))
	runIdx := make([]int, 0, len(idx))
	for _, i := range idx {
		op, user, _ := passkey.ParseSubject(CommandPrefix, cmds[i].Subject)
		if user != "" && failed[user] {
			results[i] = Result{UserID: user, Op: op, Transient: errHeldBack}
			continue
		}
		run = append(run, cmds[i])
		runIdx = append(runIdx, i)
	}
	if len(run) == 0 {
		return
	}
	res, err := p.Process(run)
	switch {
	case err == nil:
		for k, i := range runIdx {
			results[i] = res[k]
		}
	case len(run) == 1:
		op, user, _ := passkey.ParseSubject(CommandPrefix, run[0].Subject)
		results[runIdx[0]] = Result{UserID: user, Op: op, Transient: err}
		if user != "" {
			failed[user] = true
		}
	default:
		mid := len(runIdx) / 2
		p.isolate(cmds, runIdx[:mid], results, failed)
		p.isolate(cmds, runIdx[mid:], results, failed)
	}
}

// errHeldBack is the transient failure of a command held back behind an
// earlier command of its user that failed.
var errHeldBack = errors.New("held back behind an earlier command of the same user that failed")

// prepareSafely is prepare, with a panic turned into a transient failure of
// this command alone.
func (p *Processor) prepareSafely(c *Command) (pr prepared) {
	defer func() {
		if r := recover(); r != nil {
			pr = prepared{cmd: c, broken: fmt.Errorf("panic while preparing command: %v", r)}
		}
	}()
	return p.prepare(c)
}

// prepare checks everything that does not need the store.
func (p *Processor) prepare(c *Command) prepared {
	pr := prepared{cmd: c}
	// The token is verified even when an earlier check refuses the command:
	// its principal scopes the command's Nats-Msg-Id and is part of its
	// fingerprint, so that one caller's command is never another's answer.
	principal, authErr := p.Verifier.Verify(headerValues(c.Header, HeaderAuthorization), c.Timestamp)
	pr.principal = principal
	pr.fingerprint = passkey.Fingerprint(c.Subject, c.Body, principal.Issuer, principal.Subject)
	msgIDs := c.Header.Values(HeaderMsgID)
	msgIDErr := checkMsgIDs(msgIDs, passkey.MaxScopedMsgIDLen)
	switch {
	case msgIDErr != nil || len(msgIDs) == 0:
		pr.key = binary.BigEndian.AppendUint64([]byte("s:"), c.StreamSeq)
	case authErr != nil:
		pr.key = MsgIDKey(msgIDs[0])
	default:
		pr.key = MsgIDKey(passkey.ScopeMsgID(principal.Issuer, principal.Subject, msgIDs[0]))
		if plain := MsgIDKey(msgIDs[0]); !bytes.Equal(plain, pr.key) {
			pr.plainKey = plain
		}
	}

	op, userID, err := passkey.ParseSubject(CommandPrefix, c.Subject)
	pr.op, pr.userID = op, userID
	if err == nil {
		pr.owner = userID
	}
	switch {
	case err != nil:
	case op == passkey.OpList:
		err = errListNotACommand
	case msgIDErr != nil:
		err = msgIDErr
	default:
		err = checkReplyTo(headerValues(c.Header, HeaderReplyTo))
	}
	if err == nil {
		err = passkey.ValidateContentType(headerValues(c.Header, HeaderContentType))
	}
	if err == nil {
		if op == passkey.OpRemove {
			pr.remove, err = passkey.DecodeRemove(c.Body)
		} else {
			pr.sync, err = passkey.DecodeSync(c.Body)
		}
	}
	if err == nil {
		err = authErr
	}
	pr.refusal = err
	return pr
}

// errListNotACommand answers a list stored in the stream as a command.
var errListNotACommand = passkey.Errorf(passkey.CodeInvalidArgument, passkey.IDSubjectInvalid,
	"list is a request, not a command: use passkeys.list.<userId>")

// checkMsgIDs checks the Nats-Msg-Id headers of a command or request: at
// most one, and that one bounded (passkey.ValidateMsgID).
func checkMsgIDs(ids []string, max int) error {
	switch len(ids) {
	case 0:
		return nil
	case 1:
		return passkey.ValidateMsgID(ids[0], max)
	default:
		return errOneMsgID
	}
}

// errOneMsgID answers a command or request with several Nats-Msg-Id headers.
var errOneMsgID = passkey.Errorf(passkey.CodeInvalidArgument, passkey.IDHeaderInvalid, "only one Nats-Msg-Id header is allowed")

// apply runs one prepared command inside tx. It returns an error only for a
// store failure, which aborts the batch.
func (p *Processor) apply(tx *storage.Tx, pr *prepared, expires time.Time) (Result, error) {
	res := Result{UserID: pr.userID, Op: pr.op}
	if p.breakTx != nil {
		if err := p.breakTx(pr.cmd); err != nil {
			return res, err
		}
	}
	if pr.broken != nil {
		res.Transient = pr.broken
		return res, nil
	}
	stored, err := p.storedOutcome(tx, pr)
	if errors.Is(err, binrec.ErrCorrupt) {
		// One damaged record must not hold up the commands batched with it.
		res.Transient = err
		return res, nil
	}
	if err != nil {
		return res, err
	}
	if stored != nil {
		if !sameCommand(stored, pr.cmd.Subject, pr.fingerprint) {
			res.Reply = ErrorReply(errMsgIDReused)
			return res, nil
		}
		res.Reply, err = ReplyFromRecord(stored.Reply)
		if err != nil {
			res.Transient = fmt.Errorf("outcome of %s: %w", pr.cmd.Subject, err)
			return res, nil
		}
		res.Repeat = true
		if stored.Expires.Before(expires) {
			// A repeat stored past JetStream's duplicate window is a new stream
			// message that lives a full MaxAge from now; the record must live
			// as long, or a later replay of that message would apply it again.
			stored.Expires = expires
			return res, tx.PutOutcome(pr.owner, pr.key, stored)
		}
		return res, nil
	}
	if pr.refusal != nil {
		res.Reply = ErrorReply(passkey.AsError(pr.refusal))
	} else {
		user, err := tx.User(pr.userID)
		if errors.Is(err, binrec.ErrCorrupt) {
			res.Transient = err
			return res, nil
		}
		if err != nil {
			return res, err
		}
		next, err := p.decide(pr, user)
		var perr *passkey.Error
		switch {
		case err == nil:
			if err := tx.PutUser(next); err != nil {
				return res, err
			}
			res.Reply = SuccessReply(next)
		case errors.As(err, &perr):
			res.Reply = ErrorReply(perr)
		default:
			// Not a rule's answer: something broke. Retry it, alone.
			res.Transient = err
			return res, nil
		}
	}
	return res, tx.PutOutcome(pr.owner, pr.key, &storage.Outcome{
		Subject: pr.cmd.Subject, Fingerprint: pr.fingerprint, Reply: res.Reply.Record, Expires: expires})
}

// storedOutcome is the outcome kept for pr's key, or, where none is, one
// that a version before ids were scoped kept under the plain id (records
// without a fingerprint, compared by subject alone): a command committed
// before an upgrade and redelivered after it is a repeat, not a second
// change.
func (p *Processor) storedOutcome(tx *storage.Tx, pr *prepared) (*storage.Outcome, error) {
	stored, err := tx.Outcome(pr.owner, pr.key)
	if stored != nil || err != nil || pr.plainKey == nil {
		return stored, err
	}
	old, err := tx.Outcome(pr.owner, pr.plainKey)
	if err != nil || old == nil || old.Fingerprint != nil {
		return nil, err // a fingerprinted record under a plain id is an unverified command's: not this principal's
	}
	return old, nil
}

// sameCommand tells whether stored is the outcome of the command with this
// subject and fingerprint: only then is the command a repeat. A record
// written before fingerprints were kept compares by subject alone.
func sameCommand(stored *storage.Outcome, subject string, fingerprint []byte) bool {
	if stored.Subject != subject {
		return false
	}
	return stored.Fingerprint == nil || bytes.Equal(stored.Fingerprint, fingerprint)
}

// decide runs the rule for one command, turning a panic into an error so a
// poison command cannot take the worker down.
func (p *Processor) decide(pr *prepared, user *passkey.User) (next *passkey.User, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic while deciding command: %v", r)
		}
	}()
	if p.beforeDecide != nil {
		p.beforeDecide(pr.cmd)
	}
	at := pr.cmd.Timestamp.UTC()
	if pr.op == passkey.OpRemove {
		return passkey.RemovePasskey(pr.principal, pr.userID, user, pr.remove, at)
	}
	return passkey.SyncUser(pr.principal, pr.userID, user, pr.sync, at)
}

// errMsgIDReused answers a command whose Nats-Msg-Id was already used by
// another command (another subject, body or principal); its outcome
// belongs to someone else.
var errMsgIDReused = passkey.Errorf(passkey.CodeInvalidArgument, passkey.IDMsgIDReused,
	"the Nats-Msg-Id was already used for another command; use a new one")

// MsgIDKey is the outcome key of a command that carries Nats-Msg-Id id.
func MsgIDKey(id string) []byte { return []byte("m:" + id) }

// headerValues collects the values of header name under any spelling of its
// case: NATS headers are case-sensitive, callers are not always careful, and
// a second spelling must not slip past the one-value checks.
func headerValues(h nats.Header, name string) []string {
	var vals []string
	for k, v := range h {
		if strings.EqualFold(k, name) {
			vals = append(vals, v...)
		}
	}
	return vals
}

// checkReplyTo refuses a Reply-To the worker must not publish to: more than
// one, a wildcard, or a subject in the system, JetStream or passkeys
// namespaces. The worker's connection may publish to the JetStream API, so a
// Reply-To of $JS.API.STREAM.PURGE.PASSKEYS would otherwise turn every
// caller into an operator.
func checkReplyTo(values []string) error {
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
	return errReplyTo
}

// maxReplyToLen bounds a reply subject: it is logged and kept in dead
// letters. An inbox is far shorter.
const maxReplyToLen = 256

// errReplyTo answers a command whose Reply-To the worker will not publish to.
var errReplyTo = passkey.Errorf(passkey.CodeInvalidArgument, passkey.IDHeaderInvalid,
	"Reply-To must be one subject of at most 256 bytes outside the $ and passkeys namespaces, without wildcards")

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
