package chaos

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strings"

	"github.com/anishathalye/porcupine"

	"github.com/passkeys/worker/passkey"
)

// userState is the model of one user: what the contract says the worker
// holds for it. Comparable with ==, as porcupine's default equality wants.
type userState struct {
	Seq      uint64
	Password bool
	Passkeys string // the ids, sorted, joined by ","
}

func (s userState) has(pk string) bool {
	return s.Passkeys != "" && slices.Contains(strings.Split(s.Passkeys, ","), pk)
}

func (s userState) without(pk string) string {
	ids := strings.Split(s.Passkeys, ",")
	return strings.Join(slices.DeleteFunc(ids, func(id string) bool { return id == pk }), ",")
}

// removeVerdict is the rule of the contract for a self-service removal of
// a ready passkey: unknown passkeys are NOT_FOUND, and the user's last
// first-factor method (no password, one passkey) is PASSKEY-LAST.
func (s userState) removeVerdict(pk string) string {
	switch {
	case !s.has(pk):
		return passkey.IDPasskeyNotFound
	case !s.Password && !strings.Contains(s.Passkeys, ","):
		return passkey.IDPasskeyLast
	}
	return ""
}

// after is the state after op, had it been applied.
func (s userState) after(op *Op) userState {
	switch op.Kind {
	case OpSync:
		return userState{Seq: s.Seq + 1, Password: op.Password, Passkeys: strings.Join(op.Set, ",")}
	case OpRemove:
		return userState{Seq: s.Seq + 1, Password: s.Password, Passkeys: s.without(op.PK)}
	}
	return s
}

// step is the model's step: every state the user can be in after op with
// its result, none if the result is impossible from s.
func step(s userState, op *Op) []userState {
	r := op.Result
	switch op.Kind {
	case OpList:
		if r.Status == StatusOK && r.Seq == s.Seq && strings.Join(r.Passkeys, ",") == s.Passkeys {
			return []userState{s}
		}
		return nil
	case OpRemove:
		verdict := s.removeVerdict(op.PK)
		switch r.Status {
		case StatusOK:
			if verdict == "" && r.Seq == s.Seq+1 {
				return []userState{s.after(op)}
			}
		case StatusRefused:
			if r.ErrID == verdict || !definitive(r.ErrID) {
				return []userState{s}
			}
		case StatusUnknown:
			if verdict == "" {
				return []userState{s, s.after(op)}
			}
			return []userState{s}
		}
		return nil
	case OpSync:
		switch r.Status {
		case StatusOK:
			if r.Seq == s.Seq+1 {
				return []userState{s.after(op)}
			}
		case StatusRefused:
			if !definitive(r.ErrID) {
				return []userState{s}
			}
		case StatusUnknown:
			return []userState{s, s.after(op)}
		}
	}
	return nil
}

// definitive tells whether a refusal is a verdict of the rules (the model
// must agree with it) rather than a failure that changed nothing.
func definitive(id string) bool {
	return id == passkey.IDPasskeyNotFound || id == passkey.IDPasskeyLast
}

// model is the per-user model, partitioned by user, for porcupine.
func model() porcupine.Model {
	nm := &porcupine.NondeterministicModel{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byUser := map[string][]porcupine.Operation{}
			var users []string
			for _, o := range history {
				u := o.Input.(*Op).User
				if _, ok := byUser[u]; !ok {
					users = append(users, u)
				}
				byUser[u] = append(byUser[u], o)
			}
			var parts [][]porcupine.Operation
			for _, u := range users {
				parts = append(parts, byUser[u])
			}
			return parts
		},
		Init: func() []any { return []any{userState{}} },
		Step: func(state, input, _ any) []any {
			var out []any
			for _, s := range step(state.(userState), input.(*Op)) {
				out = append(out, s)
			}
			return out
		},
		Hash: func(state any) uint64 {
			s := state.(userState)
			h := fnv.New64a()
			h.Write([]byte(s.Passkeys))
			return h.Sum64() ^ s.Seq<<1 ^ map[bool]uint64{true: 1}[s.Password]
		},
		DescribeOperation: func(input, _ any) string { return describe(input.(*Op)) },
		DescribeState: func(state any) string {
			s := state.(userState)
			return fmt.Sprintf("seq %d, password %v, passkeys [%s]", s.Seq, s.Password, s.Passkeys)
		},
	}
	return nm.ToModel()
}

// describe is one line for an operation and its result.
func describe(op *Op) string {
	var what string
	switch op.Kind {
	case OpSync:
		what = fmt.Sprintf("sync(%s, password %v, [%s])", op.User, op.Password, strings.Join(op.Set, ","))
	case OpRemove:
		what = fmt.Sprintf("remove(%s, %s)", op.User, op.PK)
	default:
		what = fmt.Sprintf("list(%s)", op.User)
	}
	r := op.Result
	switch {
	case r.Status == StatusRefused:
		what += " -> " + r.ErrID
	case r.Status == StatusUnknown:
		what += " -> ?"
	case op.Kind == OpList:
		what += fmt.Sprintf(" -> seq %d [%s]", r.Seq, strings.Join(r.Passkeys, ","))
	default:
		what += fmt.Sprintf(" -> seq %d", r.Seq)
	}
	if op.Resolved {
		what += " (asked again)"
	}
	return what
}
