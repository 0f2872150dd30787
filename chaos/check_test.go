package chaos

import (
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/passkeys/worker/passkey"
)

// h builds a one-user history: each op's call and return are given in
// milliseconds.
func h(ops ...*Op) []*Op { return ops }

func syncOp(call, ret int64, seq uint64, password bool, set ...string) *Op {
	return &Op{Kind: OpSync, User: "u", Set: set, Password: password, MsgID: "s", Call: call * 1e6, Return: ret * 1e6,
		Result: Result{Status: StatusOK, Seq: seq}}
}

func removeOp(call, ret int64, pk string, r Result) *Op {
	return &Op{Kind: OpRemove, User: "u", PK: pk, MsgID: "r-" + pk, Call: call * 1e6, Return: ret * 1e6, Result: r}
}

func listOp(call, ret int64, seq uint64, pks ...string) *Op {
	return &Op{Kind: OpList, User: "u", Call: call * 1e6, Return: ret * 1e6, Result: Result{Status: StatusOK, Seq: seq, Passkeys: pks}}
}

func dated(op *Op, date string) *Op {
	op.Result.Date = date
	return op
}

func ok(seq uint64) Result     { return Result{Status: StatusOK, Seq: seq} }
func refused(id string) Result { return Result{Status: StatusRefused, ErrID: id} }

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ops       []*Op
		legal     bool
		anomalies []string // a piece of each anomaly expected
	}{
		{"RemovalsAndReads", h(syncOp(0, 1, 1, false, "a", "b"), removeOp(2, 3, "a", ok(2)), listOp(4, 5, 2, "b"),
			removeOp(6, 7, "b", refused(passkey.IDPasskeyLast)), removeOp(8, 9, "a", refused(passkey.IDPasskeyNotFound)),
			listOp(10, 11, 2, "b")), true, nil},
		{"ConcurrentReadSeesEither", h(syncOp(0, 1, 1, true, "a", "b"), removeOp(2, 6, "a", ok(2)), listOp(3, 4, 1, "a", "b"),
			listOp(5, 7, 2, "b"), listOp(8, 9, 2, "b")), true, nil},
		{"RemovalUndone", h(syncOp(0, 1, 1, true, "a", "b"), removeOp(2, 3, "a", ok(2)), listOp(4, 5, 1, "a", "b")),
			false, []string{"confirmed, then list"}},
		{"SequenceRepeated", h(syncOp(0, 1, 1, true, "a", "b", "c"), removeOp(2, 3, "a", ok(2)), removeOp(4, 5, "b", ok(2))),
			false, []string{"sequence 2 given twice", "not lower"}},
		{"WrongVerdict", h(syncOp(0, 1, 1, true, "a", "b"), removeOp(2, 3, "a", refused(passkey.IDPasskeyLast))), false, nil},
		{"UnknownResolvedAsApplied", h(syncOp(0, 1, 1, true, "a", "b"), removeOp(2, 50, "a", Result{Status: StatusUnknown}),
			listOp(10, 11, 2, "b")), true, nil},
		{"UnknownNeverApplied", h(syncOp(0, 1, 1, true, "a", "b"), removeOp(2, 50, "a", Result{Status: StatusUnknown}),
			listOp(10, 11, 1, "a", "b")), true, nil},
		{"GapNoUnknownCanFill", h(syncOp(0, 1, 1, true, "a", "b", "c"), removeOp(2, 3, "a", ok(3))),
			false, []string{"only 0 operations unresolved"}},
		{"FinalReadDisagrees", h(syncOp(0, 1, 1, true, "a", "b"), removeOp(2, 3, "a", ok(2)), listOp(4, 5, 2, "a")),
			false, []string{"the last read"}},
		{"UnexpectedRefusal", h(syncOp(0, 1, 1, true, "a", "b"), removeOp(2, 3, "a", refused(passkey.IDDeniedUser)), listOp(4, 5, 1, "a", "b")),
			true, []string{"an unexpected refusal"}},
		{"FailureAfterRetries", h(syncOp(0, 1, 1, true, "a", "b"), removeOp(2, 3, "a", refused(passkey.IDRetriesExhausted)), listOp(4, 5, 1, "a", "b")),
			true, nil},
		{"SequenceWithTwoDates", h(syncOp(0, 1, 1, true, "a", "b"), dated(removeOp(2, 3, "a", ok(2)), "2026-12-07T10:00:00Z"),
			dated(listOp(4, 5, 2, "b"), "2026-12-07T10:00:09Z")), true, []string{"sequence 2 changed at"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := check(tc.ops, 10*time.Second)
			if got := v.Linearizable == porcupine.Ok; got != tc.legal {
				t.Errorf("linearizable %s, want legal %v", v.Linearizable, tc.legal)
			}
			for _, want := range tc.anomalies {
				if !strings.Contains(strings.Join(v.Anomalies, "\n"), want) {
					t.Errorf("no anomaly with %q in %q", want, v.Anomalies)
				}
			}
			if tc.anomalies == nil && len(v.Anomalies) > 0 {
				t.Errorf("anomalies where none were expected: %q", v.Anomalies)
			}
		})
	}
}

func TestRepeatMismatch(t *testing.T) {
	op := &Op{User: "u", MsgID: "m", Result: Result{Status: StatusOK, Body: []byte(`{"details":{"sequence":"2"}}`)}}
	if d := repeatMismatch(op, []byte(`{"details":{"sequence":"2"}}`)); d != "" {
		t.Errorf("same bytes: %s", d)
	}
	if d := repeatMismatch(op, []byte(`{"details":{"sequence":"3"}}`)); !strings.Contains(d, "a different reply") {
		t.Errorf("different bytes: %q", d)
	}
}

// A stall is the time a user's failed operations and the answer that
// ended them were in flight: a gap with none in flight is no part of it,
// and an operation resolved at the end counts until its call gave up.
func TestUnavailability(t *testing.T) {
	s := int64(time.Second)
	ops := []*Op{
		{User: "u", Kind: OpList, Call: 0, Return: s / 10, Result: Result{Status: StatusOK}},
		{User: "u", Kind: OpList, Call: 10 * s, Return: 40 * s, Result: Result{Status: StatusUnknown}},
		{User: "u", Kind: OpList, Call: 41 * s, Return: 43 * s, Result: Result{Status: StatusOK}},
		{User: "v", Kind: OpList, Call: 100 * s, Return: 103 * s, Result: Result{Status: StatusOK}},
		{User: "w", Kind: OpRemove, Call: 200 * s, GaveUp: 230 * s, Return: 500 * s, Resolved: true, Result: Result{Status: StatusOK}},
		{User: "w", Kind: OpList, Call: 220 * s, Return: 232 * s, Result: Result{Status: StatusOK}},
		{User: "x", Kind: OpList, Call: 300 * s, Return: 320 * s, Result: Result{Status: StatusOK}},
	}
	faults := []Fault{{Kind: FaultNodeKill, Start: 9 * s, End: 12 * s}, {Kind: FaultPowerOne, Start: 199 * s, End: 201 * s},
		{Kind: FaultRouteCut, Start: 299 * s, End: 301 * s}, {Kind: FaultWorkerCut, Start: 300 * s, End: 303 * s}}
	all, alone := unavailability(ops, faults)
	want := map[string]time.Duration{FaultNodeKill: 32 * time.Second, FaultPowerOne: 32 * time.Second, "none": 3 * time.Second}
	if !maps.Equal(alone, want) {
		t.Errorf("stalls of a fault alone %v, want %v", alone, want)
	}
	want[FaultRouteCut], want[FaultWorkerCut] = 20*time.Second, 20*time.Second
	if !maps.Equal(all, want) {
		t.Errorf("stalls %v, want %v", all, want)
	}
}
