package chaos

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/passkeys/worker/passkey"
)

// Verdict is what the checker found in a history.
type Verdict struct {
	// Linearizable is porcupine's result for the per-user model: "Ok",
	// "Illegal", or "Unknown" (its time ran out).
	Linearizable porcupine.CheckResult
	// Anomalies are the invariants' findings, one line each.
	Anomalies []string
	info      porcupine.LinearizationInfo
}

// OK tells whether the history passed every check.
func (v *Verdict) OK() bool { return v.Linearizable == porcupine.Ok && len(v.Anomalies) == 0 }

// check holds ops to the per-user model (porcupine) and to the
// invariants: a confirmed removal never reappears in a later read; a
// user's sequences grow in real-time order, never repeat and leave no gap
// that an unresolved operation could not fill; and the last read of every
// user is the initial state with exactly the confirmed changes applied in
// sequence order. A repeat's bytes are compared where it is asked
// (repeatMismatch), as it is made.
func check(ops []*Op, timeout time.Duration) *Verdict {
	v := &Verdict{}
	var hist []porcupine.Operation
	for _, op := range ops {
		ret := op.Return
		if op.Result.Status == StatusUnknown {
			ret = math.MaxInt64 // it may take effect at any time after its call
		}
		if op.Kind == OpList && op.Result.Status != StatusOK {
			continue // a read that got nothing says nothing
		}
		hist = append(hist, porcupine.Operation{ClientId: op.Client, Input: op, Call: op.Call, Output: op.Result, Return: ret})
	}
	v.Linearizable, v.info = porcupine.CheckOperationsVerbose(model(), hist, timeout)
	byUser := map[string][]*Op{}
	var users []string
	for _, op := range ops {
		if _, ok := byUser[op.User]; !ok {
			users = append(users, op.User)
		}
		byUser[op.User] = append(byUser[op.User], op)
	}
	slices.Sort(users)
	for _, u := range users {
		v.Anomalies = append(v.Anomalies, checkUser(u, byUser[u])...)
	}
	return v
}

// checkUser is the invariants of one user's operations.
func checkUser(user string, ops []*Op) []string {
	var found []string
	changes := map[uint64]*Op{}
	unknown := 0
	for _, op := range ops {
		switch {
		case op.isChange() && op.Result.Status == StatusUnknown:
			unknown++
		case op.isChange() && op.Result.Status == StatusOK:
			if other, ok := changes[op.Result.Seq]; ok {
				found = append(found, fmt.Sprintf("%s: sequence %d given twice: %s and %s", user, op.Result.Seq, describe(other), describe(op)))
			}
			changes[op.Result.Seq] = op
		}
	}
	seqs := sortedKeys(changes)
	if n := len(seqs); n > 0 && int(seqs[n-1])-n > unknown {
		found = append(found, fmt.Sprintf("%s: %d sequences confirmed up to %d, and only %d operations unresolved", user, n, seqs[n-1], unknown))
	}
	for _, a := range ops {
		for _, b := range ops {
			if a.isChange() && b.isChange() && a.Result.Status == StatusOK && b.Result.Status == StatusOK &&
				a.Return < b.Call && a.Result.Seq >= b.Result.Seq {
				found = append(found, fmt.Sprintf("%s: %s ended before %s began, with a sequence not lower", user, describe(a), describe(b)))
			}
		}
	}
	found = append(found, reappeared(user, ops)...)
	found = append(found, refusals(user, ops)...)
	found = append(found, dates(user, ops)...)
	return append(found, finalState(user, ops, changes, unknown)...)
}

// failureIDs are the refusals that say the command failed and changed
// nothing: the store or NATS failed until the retries ran out.
var failureIDs = []string{passkey.IDInternal, passkey.IDRetriesExhausted}

// refusals is every refusal the campaign's calls should never get: its
// tokens are valid all along and its requests well formed, so anything but
// a verdict of the rules or a failure after retries (an authentication
// refusal, a denial, a reply that breaks the contract) is an anomaly.
func refusals(user string, ops []*Op) []string {
	var found []string
	for _, op := range ops {
		if id := op.Result.ErrID; op.Result.Status == StatusRefused && !definitive(id) && !slices.Contains(failureIDs, id) {
			found = append(found, fmt.Sprintf("%s: an unexpected refusal: %s %s", user, describe(op), op.Result.Err))
		}
	}
	return found
}

// dates is every sequence of the user seen with two changeDates: a change
// lost and made again (a later command took its number) shows so, even
// where no read saw the loss.
func dates(user string, ops []*Op) []string {
	var found []string
	seen := map[uint64]*Op{}
	for _, op := range ops {
		if op.Result.Status != StatusOK || op.Result.Date == "" {
			continue
		}
		first, ok := seen[op.Result.Seq]
		switch {
		case !ok:
			seen[op.Result.Seq] = op
		case first.Result.Date != op.Result.Date:
			found = append(found, fmt.Sprintf("%s: sequence %d changed at %s (%s) and at %s (%s)", user, op.Result.Seq,
				first.Result.Date, describe(first), op.Result.Date, describe(op)))
		}
	}
	return found
}

// reappeared is every read that shows a passkey after its removal was
// confirmed (a sync gives new ids, so none may come back).
func reappeared(user string, ops []*Op) []string {
	var found []string
	for _, rm := range ops {
		if rm.Kind != OpRemove || rm.Result.Status != StatusOK {
			continue
		}
		for _, l := range ops {
			if l.Kind == OpList && l.Result.Status == StatusOK && l.Call > rm.Return && slices.Contains(l.Result.Passkeys, rm.PK) {
				found = append(found, fmt.Sprintf("%s: %s confirmed, then %s", user, describe(rm), describe(l)))
			}
		}
	}
	return found
}

// finalState compares the last read of the user (the campaign's final
// reads come after every fault healed and every operation was asked
// again) with the changes confirmed, applied in sequence order.
func finalState(user string, ops []*Op, changes map[uint64]*Op, unknown int) []string {
	var last *Op
	for _, op := range ops {
		if op.Kind == OpList && op.Result.Status == StatusOK && (last == nil || op.Call > last.Call) {
			last = op
		}
	}
	if last == nil || unknown > 0 {
		return nil // nothing to compare, or an unresolved change may be in it: the model alone judges
	}
	for _, op := range ops {
		if op.isChange() && op.Return >= last.Call {
			return nil // not a final read: a change may have come after it
		}
	}
	var s userState
	for _, seq := range sortedKeys(changes) {
		s = s.after(changes[seq])
	}
	if got := strings.Join(last.Result.Passkeys, ","); got != s.Passkeys || last.Result.Seq != s.Seq {
		return []string{fmt.Sprintf("%s: the last read is %s; the confirmed changes make seq %d [%s]", user, describe(last), s.Seq, s.Passkeys)}
	}
	return nil
}

func sortedKeys(m map[uint64]*Op) []uint64 {
	keys := make([]uint64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// repeatMismatch says how a repeat's reply differs from the first, or ""
// where they are the same bytes.
func repeatMismatch(op *Op, again []byte) string {
	if bytes.Equal(op.Result.Body, again) {
		return ""
	}
	return fmt.Sprintf("%s: asked again with Nats-Msg-Id %s, a different reply: %q, then %q", op.User, op.MsgID, op.Result.Body, again)
}
