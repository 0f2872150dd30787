package command

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/event"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/trust"
)

// Result is what became of a command.
type Result struct {
	// Answer is what the command got; zero when Transient is set.
	Answer passkey.Answer
	// Repeat tells that Answer is the stored outcome of an earlier delivery.
	Repeat bool
	// Skipped tells that the store had applied the stream past this
	// command and keeps no outcome for it: nothing to apply, nothing to
	// answer with.
	Skipped bool
	// Transient is set when the command could not be processed now and
	// should be retried; nothing of it was committed.
	Transient error
	// UserID and Op are what the subject named, when it could be parsed.
	UserID string
	Op     passkey.Op
	// ReplyTo is where the answer goes: the command's one Reply-To, when
	// the worker may publish to it (CheckReplyTo); "" for none.
	ReplyTo string
	// Control tells that the message was a control entry, kept (or, when
	// it is not a key set, left out): nothing to answer.
	Control bool
}

// Applier applies batches of commands to the store. It holds no
// transport: the consumer adapter feeds it and sends what it returns.
type Applier struct {
	Store Store
	// Verifier checks tokens, each by the key set the partition's control
	// entries put in force at its command (keySetAt).
	Verifier *auth.Verifier
	// Retention is how long after its command was stored an outcome is
	// kept: it expires at the command's stream timestamp plus Retention, so
	// every worker that applies the same commands keeps the same records.
	Retention time.Duration
	Log       zerolog.Logger
	// Fence, when set, is checked before every transaction: an error from
	// it (the partition's lease is not held) stops the commit, with
	// ErrFenced. A worker applies to a partition only while it holds it.
	Fence func() error
	// Rules decide a command's change (nil: passkey's, PasskeyRules).
	Rules Rules

	entries sync.Map // stream sequence -> *parsedEntry: control entries read
}

// Store is where an Applier commits; *storage.Store is the one.
type Store interface {
	// Update runs fn in one read-write transaction, committed when fn
	// returns nil; an error leaves nothing of it.
	Update(fn func(*storage.Tx) error) error
	// View runs fn in one read-only transaction.
	View(fn func(*storage.Tx) error) error
	// AppliedSeq is the last stream sequence a committed transaction
	// recorded.
	AppliedSeq() (uint64, error)
}

// Rules decide what a command changes: passkey.RemovePasskey and
// passkey.SyncUser (PasskeyRules). A rule that panics makes its command
// poison: its INTERNAL answer is stored like any refusal.
type Rules interface {
	RemovePasskey(p passkey.Principal, userID string, u *passkey.User, req passkey.RemoveRequest, at time.Time) (*passkey.User, error)
	SyncUser(p passkey.Principal, userID string, u *passkey.User, req passkey.SyncRequest, at time.Time) (*passkey.User, error)
}

// PasskeyRules are package passkey's rules.
type PasskeyRules struct{}

func (PasskeyRules) RemovePasskey(p passkey.Principal, userID string, u *passkey.User, req passkey.RemoveRequest, at time.Time) (*passkey.User, error) {
	return passkey.RemovePasskey(p, userID, u, req, at)
}

func (PasskeyRules) SyncUser(p passkey.Principal, userID string, u *passkey.User, req passkey.SyncRequest, at time.Time) (*passkey.User, error) {
	return passkey.SyncUser(p, userID, u, req, at)
}

// checked is a command decoded and authenticated before the transaction,
// so that the expensive work (signatures, JSON) does not hold the write lock.
type checked struct {
	cmd     *Command
	replyTo string // Result.ReplyTo
	// op and userID are what the subject names; userID, "" when it names
	// none validly, is also the user whose records hold the outcome.
	op     passkey.Op
	userID string
	// key is the outcome's key: the Nats-Msg-Id scoped to the verified
	// principal (so a principal's ids are its own, whether it published
	// into the stream with a plain id or through an endpoint, which scopes
	// it), the plain id when no token verifies, or the stream sequence.
	key []byte
	// msgID is the caller's Nats-Msg-Id, without the scope of its
	// principal, for the change's event; "" without one.
	msgID     string
	remove    passkey.RemoveRequest
	sync      passkey.SyncRequest
	principal passkey.Principal
	// fingerprint identifies the command (passkey.Fingerprint).
	fingerprint []byte
	// refusal is a definitive refusal found before reading the store.
	// Typed: only a rule's *passkey.Error can become a stored outcome; any
	// other error makes the command broken (below), never a refusal with
	// a rule's id by accident.
	refusal *passkey.Error
	broken  error // checking it panicked: it breaks alike on every worker, so its answer is INTERNAL, stored
	// keys is the key set the token was checked by (nil: none was known),
	// rules the rules version (trust.RulesVersion) the command was checked
	// by.
	keys  *auth.KeySet
	rules int
}

// Checked is a batch whose commands have been checked (Check) and wait for
// their transaction (CommitInOrder).
type Checked struct{ checked []checked }

// Check checks every command of a batch: subject, headers, body and token,
// all that needs no write. It is the expensive part (signatures, JSON) and
// runs in parallel, on up to GOMAXPROCS goroutines, so that a batch's
// commit (its fsyncs) can overlap the next batch's Check; the order of the
// commands is kept for CommitInOrder.
func (a *Applier) Check(cmds []*Command) *Checked {
	sets, rules := a.keySets(cmds)
	// The batch's EdDSA signatures under ZIP 215 checked together first;
	// each command's own check takes what this found good.
	tokens := make([]auth.Token, 0, len(cmds))
	for i, cmd := range cmds {
		if sets[i] != nil && sets[i].Rule == auth.RuleZIP215 {
			tokens = append(tokens, auth.Token{Authorization: cmd.Header.ValuesFold(HeaderAuthorization), At: cmd.Timestamp, Keys: sets[i]})
		}
	}
	var pre auth.Verified
	if len(tokens) > 0 {
		pre = a.Verifier.VerifyBatch(tokens)
	}
	c := &Checked{checked: make([]checked, len(cmds))}
	workers := min(runtime.GOMAXPROCS(0), len(cmds))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(cmds); i = int(next.Add(1) - 1) {
				c.checked[i] = a.checkSafely(cmds[i], sets[i], rules[i], pre)
			}
		})
	}
	wg.Wait()
	return c
}

// parsedEntry is a control entry as stored, and as parsed (nil: it is not
// a key set, err says why).
type parsedEntry struct {
	body  []byte
	entry *trust.Entry
	err   error
}

// entry is the control entry stored at seq with body, parsed once; nil,
// with Parse's error, for one that is not a key set, or (trust.ErrNewer)
// one of a newer version.
func (a *Applier) entry(seq uint64, body []byte) (*trust.Entry, error) {
	if v, ok := a.entries.Load(seq); ok && bytes.Equal(v.(*parsedEntry).body, body) {
		return v.(*parsedEntry).entry, v.(*parsedEntry).err
	}
	e, err := trust.Parse(body)
	switch {
	case errors.Is(err, trust.ErrNewer):
		a.Log.Error().Err(err).Uint64("stream_seq", seq).Msg("the partition waits at a control entry this version does not know: upgrade the worker")
	case err != nil:
		a.Log.Error().Err(err).Uint64("stream_seq", seq).Msg("a control entry that is not a key set is left out")
	}
	a.entries.Store(seq, &parsedEntry{body: bytes.Clone(body), entry: e, err: err})
	return e, err
}

// keySetAt is the key set and the rules version that judge c: those of
// the partition's last control entry before it that tx keeps (trust); a
// nil set when it keeps none.
func (a *Applier) keySetAt(tx *storage.Tx, c *Command) (*auth.KeySet, int) {
	seq, body, first := tx.ControlBefore(c.StreamSeq)
	if body == nil {
		return nil, 0
	}
	if e, _ := a.entry(seq, body); e != nil {
		return e.For(first, c.Timestamp), e.RulesFor(first)
	}
	return nil, 0
}

// keySets is the key set each command is checked by: the one a control
// entry earlier in the batch puts in force, else the one the store says is
// in force at it. Where the commands before the batch are not all applied
// yet, that is a guess: the commit looks again (apply), and checks a
// command again by the right set where the guess was wrong.
func (a *Applier) keySets(cmds []*Command) ([]*auth.KeySet, []int) {
	sets, rules := make([]*auth.KeySet, len(cmds)), make([]int, len(cmds))
	_ = a.Store.View(func(tx *storage.Tx) error {
		var ctl *trust.Entry
		var ctlSeq uint64
		for i, c := range cmds {
			switch {
			case c.Control:
				if e, _ := a.entry(c.StreamSeq, c.Body); e != nil {
					ctl, ctlSeq = e, c.StreamSeq
				}
			case ctl != nil && ctlSeq < c.StreamSeq:
				sets[i], rules[i] = ctl.KeySet(), ctl.RulesFor(false)
			default:
				sets[i], rules[i] = a.keySetAt(tx, c)
			}
		}
		return nil
	})
	return sets, rules
}

// commitFrom applies a checked batch's commands from index start on, in
// order, in one transaction, and returns a result for each (zero before
// start). A failure of the store fails the whole batch: it returns the
// error and nothing was committed; the batch may be committed again.
//
// A command that cannot be applied now (a damaged record: a fault of this
// machine, not of the command) stops the batch there: it and every later
// command are Transient and not committed, the ones before it are. So a
// later command never overtakes it; the caller tries the rest again.
func (a *Applier) commitFrom(c *Checked, start int) ([]Result, error) {
	if a.Fence != nil {
		if err := a.Fence(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrFenced, err)
		}
	}
	results := make([]Result, len(c.checked))
	err := a.Store.Update(func(tx *storage.Tx) error {
		clear(results)
		var applied uint64
		var appliedAt time.Time
		for i := start; i < len(c.checked); i++ {
			r, err := a.apply(tx, &c.checked[i])
			if err != nil {
				return err
			}
			results[i] = r
			if r.Transient != nil {
				for k := i + 1; k < len(c.checked); k++ {
					results[k] = Result{UserID: c.checked[k].userID, Op: c.checked[k].op, Transient: errHeldBack}
				}
				break
			}
			if seq := c.checked[i].cmd.StreamSeq; seq > applied {
				applied, appliedAt = seq, c.checked[i].cmd.Timestamp
			}
		}
		return tx.NoteApplied(applied, appliedAt)
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// ErrFenced wraps the error of an Applier's Fence: nothing was applied,
// since this worker does not hold the partition now.
var ErrFenced = errors.New("the partition is not held")

// errNoKeySet is the transient failure of a command whose partition's
// store keeps no control entry yet (trust.AwaitEntries puts them
// there before the partition is served).
var errNoKeySet = errors.New("no key set is known for the partition")

// errHeldBack is the transient failure of a command held back behind an
// earlier command of the batch that could not be applied now.
var errHeldBack = errors.New("held back behind an earlier command that could not be applied")

// checkSafely is check, with a panic turned into the command's INTERNAL
// answer: the same command panics the same way on every worker, so it is a
// fact about the command, stored like any refusal.
func (a *Applier) checkSafely(c *Command, keys *auth.KeySet, rules int, pre auth.Verified) (pr checked) {
	if c.Control {
		return checked{cmd: c}
	}
	defer func() {
		if r := recover(); r != nil {
			to, _ := replyTo(c)
			pr = checked{cmd: c, replyTo: to, key: binary.BigEndian.AppendUint64([]byte("s:"), c.StreamSeq),
				broken: fmt.Errorf("panic while checking command: %v", r)}
		}
	}()
	return a.check(c, keys, rules, pre)
}

// check checks everything that does not need the store, the token by
// keys (taking a signature VerifyBatch found good, in pre, as checked),
// the rest by the rules version rules.
func (a *Applier) check(c *Command, keys *auth.KeySet, rules int, pre auth.Verified) checked {
	to, replyErr := replyTo(c)
	pr := checked{cmd: c, replyTo: to, keys: keys, rules: rules}
	// The token is verified even when an earlier check refuses the command:
	// its principal scopes the command's Nats-Msg-Id and is part of its
	// fingerprint, so that one caller's command is never another's answer.
	principal, authErr := passkey.Principal{}, error(passkey.ErrKeysUnavailable) // never committed: apply checks again
	if keys != nil {
		principal, authErr = a.Verifier.VerifyWith(c.Header.ValuesFold(HeaderAuthorization), c.Timestamp, keys, pre)
	}
	pr.principal = principal
	pr.fingerprint = passkey.Fingerprint(c.Subject, c.Body, principal.Issuer, principal.Subject)
	msgIDErr := pr.keyBy(c.Header[HeaderMsgID], principal, authErr) // exactly as JetStream matches it

	op, userID, err := passkey.ParseSubject(partition.CommandPrefix, c.Subject) // "", "" on an error
	pr.op, pr.userID = op, userID
	switch {
	case err != nil:
	case op == passkey.OpList:
		err = passkey.ErrListNotACommand
	case msgIDErr != nil:
		err = msgIDErr
	case rules >= 2 && len(c.Header.ValuesFold(HeaderTTL)) > 0:
		err = passkey.ErrTTLRefused
	default:
		err = replyErr
	}
	if err == nil {
		err = passkey.ValidateContentType(c.Header.ValuesFold(HeaderContentType))
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
	var perr *passkey.Error
	switch {
	case errors.As(err, &perr):
		pr.refusal = perr
	case err != nil:
		pr.broken = err
	}
	return pr
}

// replyTo is where c's answer goes (Result.ReplyTo), and what is wrong
// with its Reply-To: a command refused for it gets no answer.
func replyTo(c *Command) (string, error) {
	vals := c.Header.ValuesFold(HeaderReplyTo)
	if err := CheckReplyTo(vals); err != nil || len(vals) == 0 {
		return "", err
	}
	return vals[0], nil
}

// keyBy sets the key the command's outcome is kept under: its Nats-Msg-Id
// scoped to its verified principal, the plain id when the token
// does not verify, or its stream sequence without a valid id. It returns
// what is wrong with the ids.
func (pr *checked) keyBy(msgIDs []string, principal passkey.Principal, authErr error) error {
	msgIDErr := CheckMsgIDs(msgIDs, passkey.MaxScopedMsgIDLen)
	switch {
	case msgIDErr != nil || len(msgIDs) == 0:
		pr.key = binary.BigEndian.AppendUint64([]byte("s:"), pr.cmd.StreamSeq)
	case authErr != nil:
		pr.key = MsgIDKey(msgIDs[0])
	default:
		// One hash of the principal per command: the scope serves the key
		// and, taken off, the caller's own id for the event.
		scope := passkey.MsgIDScope(principal.Issuer, principal.Subject)
		pr.msgID = strings.TrimPrefix(msgIDs[0], scope)
		pr.key = MsgIDKey(scope + pr.msgID)
	}
	return msgIDErr
}

// apply runs one checked command inside tx. It returns an error only for a
// store failure, which aborts the batch.
func (a *Applier) apply(tx *storage.Tx, pr *checked) (Result, error) {
	if pr.cmd.Control {
		e, err := a.entry(pr.cmd.StreamSeq, pr.cmd.Body)
		switch {
		case errors.Is(err, trust.ErrNewer):
			return Result{Control: true, Transient: err}, nil
		case e == nil:
			return Result{Control: true}, nil
		}
		return Result{Control: true}, tx.PutControl(pr.cmd.StreamSeq, pr.cmd.Body)
	}
	keys, rules := a.keySetAt(tx, pr.cmd)
	if keys == nil {
		return Result{UserID: pr.userID, Op: pr.op, Transient: errNoKeySet}, nil
	}
	if pr.keys == nil || pr.keys.ID != keys.ID || pr.rules != rules {
		// Checked by a guess that missed a control entry (Check ran
		// before the commands ahead of it were applied): again, by the
		// set and rules in force here.
		*pr = a.checkSafely(pr.cmd, keys, rules, nil)
	}
	res := Result{UserID: pr.userID, Op: pr.op, ReplyTo: pr.replyTo}
	expires := pr.cmd.Timestamp.Add(a.Retention)
	if pr.broken == nil {
		stored, err := StoredOutcome(tx, pr.userID, pr.key, pr.cmd.Timestamp)
		if stored == nil && err == nil && pr.msgID != "" && pr.cmd.Timestamp.Before(scopedSince.Add(a.Retention)) {
			stored, err = plainOutcome(tx, pr.userID, MsgIDKey(pr.msgID), pr.cmd.Timestamp)
		}
		if errors.Is(err, storage.ErrCorrupt) {
			// One damaged record must not hold up the commands batched with it.
			res.Transient = err
			return res, nil
		}
		if err != nil {
			return res, err
		}
		if stored != nil {
			return a.repeat(tx, pr, stored, expires, res)
		}
		if pr.cmd.StreamSeq != 0 && pr.cmd.StreamSeq <= tx.AppliedSeq() {
			// The store has applied the stream past this command, yet keeps
			// no outcome for it: whatever became of it is in the state
			// already. Applying it now would apply it twice, or out of order.
			res.Skipped = true
			return res, nil
		}
	}
	answer, transient, err := a.answer(tx, pr)
	if err != nil || transient != nil {
		res.Transient = transient
		return res, err
	}
	res.Answer = answer
	return res, tx.PutOutcome(pr.userID, pr.key, &storage.Outcome{
		Subject: pr.cmd.Subject, Fingerprint: pr.fingerprint, Answer: res.Answer, Expires: expires})
}

// repeat answers a command that has an outcome already: the same answer,
// when it is the same command; REQUEST-MSGID-REUSED when another command
// used its Nats-Msg-Id.
func (a *Applier) repeat(tx *storage.Tx, pr *checked, stored *storage.Outcome, expires time.Time, res Result) (Result, error) {
	if !SameCommand(stored, pr.cmd.Subject, pr.fingerprint) {
		res.Answer = passkey.Refused(passkey.ErrMsgIDReused)
		return res, nil
	}
	res.Answer, res.Repeat = stored.Answer, true
	if stored.Expires.Before(expires) {
		// A repeat stored past JetStream's duplicate window is a new stream
		// message that lives a full MaxAge from now; the record must live
		// as long, or a later replay of that message would apply it again.
		stored.Expires = expires
		return res, tx.PutOutcome(pr.userID, pr.key, stored)
	}
	return res, nil
}

// answer decides a command seen for the first time: INTERNAL for a broken
// one, its refusal, or the rule's verdict on the stored user, with the
// change and its event written. transient is a damaged user record (the
// command waits; the batch goes on); err a store failure.
func (a *Applier) answer(tx *storage.Tx, pr *checked) (_ passkey.Answer, transient, err error) {
	switch {
	case pr.broken != nil:
		a.internal(pr, pr.broken)
		return passkey.Refused(passkey.ErrInternal), nil, nil
	case pr.refusal != nil:
		return passkey.Refused(pr.refusal), nil, nil
	}
	user, err := tx.User(pr.userID)
	if errors.Is(err, storage.ErrCorrupt) {
		return passkey.Answer{}, err, nil
	}
	if err != nil {
		return passkey.Answer{}, nil, err
	}
	next, err := a.decide(pr, user)
	var perr *passkey.Error
	switch {
	case errors.As(err, &perr):
		return passkey.Refused(perr), nil, nil
	case err != nil:
		// Not a rule's answer: the rule broke (a panic). It breaks the
		// same way on every worker, so it is the command's answer.
		a.internal(pr, err)
		return passkey.Refused(passkey.ErrInternal), nil, nil
	}
	if err := tx.PutUser(next); err != nil {
		return passkey.Answer{}, nil, err
	}
	// The change's event, in the same transaction (an outbox): published
	// after the commit, never lost, never made twice.
	if err := tx.PutEvent(next.ID, next.Sequence, changeEvent(pr, user, next)); err != nil {
		return passkey.Answer{}, nil, err
	}
	return passkey.Changed(next), nil, nil
}

// internal logs why a command's answer is INTERNAL.
func (a *Applier) internal(pr *checked, err error) {
	a.Log.Error().Err(err).Uint64("stream_seq", pr.cmd.StreamSeq).Str("subject", Truncate(pr.cmd.Subject)).
		Msg("command failed; answered INTERNAL")
}

// changeEvent is the event of the change from before to after that pr made.
func changeEvent(pr *checked, before, after *passkey.User) []byte {
	actor := event.ActorOf(pr.principal, pr.userID)
	tr := pr.cmd.Trace()
	if pr.op == passkey.OpSync {
		return event.Synced(after, actor, pr.msgID, tr)
	}
	var removed passkey.Passkey
	for _, pk := range before.Passkeys {
		if pk.ID == pr.remove.TokenID {
			removed = pk
		}
	}
	return event.Removed(after, removed, pr.remove.Force, actor, pr.msgID, tr)
}

// StoredOutcome is the outcome kept for owner's command under key, as of
// at: one that expired by then is gone, on every worker, whether or not
// this one has pruned it yet. The one lookup of a repeat's outcome: the
// applier's and the endpoints'.
func StoredOutcome(tx *storage.Tx, owner string, key []byte, at time.Time) (*storage.Outcome, error) {
	stored, err := tx.Outcome(owner, key)
	if stored != nil && stored.Expires.Before(at) {
		stored = nil
	}
	return stored, err
}

// scopedSince is when outcomes began to be kept under scoped ids. A
// version before kept them under the id as sent; the applier looks those
// up only for commands stamped within a retention of it (with the default
// 7 days, none since 2026-12-04), so the lookup leaves every command's path
// once they have all expired, and is deterministic: it depends on the
// command's stream timestamp alone.
var scopedSince = time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)

// plainOutcome is an outcome a version before scoped ids kept under the
// plain id key, as of at: only one without a fingerprint (an unverified
// command's record under a plain id is not this principal's).
func plainOutcome(tx *storage.Tx, owner string, key []byte, at time.Time) (*storage.Outcome, error) {
	old, err := StoredOutcome(tx, owner, key, at)
	if err != nil || old == nil || old.Fingerprint != nil {
		return nil, err
	}
	return old, nil
}

// SameCommand tells whether stored is the outcome of the command with this
// subject and fingerprint: only then is the command a repeat. A record
// written before fingerprints were kept compares by subject alone.
func SameCommand(stored *storage.Outcome, subject string, fingerprint []byte) bool {
	if stored.Subject != subject {
		return false
	}
	return stored.Fingerprint == nil || bytes.Equal(stored.Fingerprint, fingerprint)
}

// decide runs the rule for one command, turning a panic into an error so a
// poison command cannot take the worker down.
func (a *Applier) decide(pr *checked, user *passkey.User) (next *passkey.User, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic while deciding command: %v", r)
		}
	}()
	rules := a.Rules
	if rules == nil {
		rules = PasskeyRules{}
	}
	at := pr.cmd.Timestamp.UTC()
	if pr.op == passkey.OpRemove {
		return rules.RemovePasskey(pr.principal, pr.userID, user, pr.remove, at)
	}
	return rules.SyncUser(pr.principal, pr.userID, user, pr.sync, at)
}
