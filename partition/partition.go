// Package partition splits users into partitions as the PASSKEYS stream
// does (NATS deterministic subject partitioning), names what belongs to a
// partition (its stored subjects, consumer, snapshot) and assigns
// partitions to workers. It holds no NATS connection.
package partition

import (
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"
)

// DefaultCount is the number of partitions a new stream is split into.
const DefaultCount = 8

// MaxCount bounds --partitions: each partition has a consumer, a store and
// a lease, and a worker holds them all on its own.
const MaxCount = 256

// The contract's subjects, spelt here only: requesters ask the endpoints
// under EndpointPrefix (passkeys.<op>.<userId>); publishers send commands
// to CommandPrefix (passkeys.cmd.<op>.<userId>); the stream stores them
// under StoredPrefix.<partition>, outside what it captures, so nobody can
// publish straight into a partition.
const (
	EndpointPrefix = "passkeys"
	CommandPrefix  = EndpointPrefix + ".cmd"
	StoredPrefix   = EndpointPrefix + ".part"
	// ReplaySubject is the operator's replay endpoint.
	ReplaySubject = EndpointPrefix + ".admin.replay"
	// InternalPrefix is where a worker asks the worker that serves a
	// partition for what only that one knows:
	// passkeys.internal.<partition>.<kind>.<userId>. Only the workers'
	// NATS user may publish or subscribe here.
	InternalPrefix = EndpointPrefix + ".internal"
)

// ControlName is the last token of a partition's control subject,
// StoredPrefix.<partition>.control: the entries that decide how the
// partition's commands after them are judged (the key sets), written by
// the operator into the stream (worker provision). The stream captures it
// apart from the commands, and NATS lets only the provisioner publish
// there; its entries never expire.
const ControlName = "control"

// ControlSubject is partition p's control subject.
func ControlSubject(p int) string { return StoredPrefix + "." + strconv.Itoa(p) + "." + ControlName }

// ControlSubjects is the stream's subject for every partition's control
// entries.
const ControlSubjects = StoredPrefix + ".*." + ControlName

// ControlOf tells whether a stored subject is a partition's control
// subject, and whose.
func ControlOf(stored string) (int, bool) {
	rest, ok := strings.CutPrefix(stored, StoredPrefix+".")
	num, name, _ := strings.Cut(rest, ".")
	p, err := strconv.Atoi(num)
	return p, ok && err == nil && p >= 0 && name == ControlName
}

// InternalPartition is the internal subjects' prefix of partition p, with
// its final dot.
func InternalPartition(p int) string { return InternalPrefix + "." + strconv.Itoa(p) + "." }

// CommandSubject is where a command of operation op on userID is
// published into the stream.
func CommandSubject(op, userID string) string { return CommandPrefix + "." + op + "." + userID }

// EndpointSubject is the request-reply subject of operation op on userID.
func EndpointSubject(op, userID string) string { return EndpointPrefix + "." + op + "." + userID }

// EndpointOf is the request-reply subject of a command subject
// (passkeys.cmd.remove.u1 -> passkeys.remove.u1); false for any other.
func EndpointOf(commandSubject string) (string, bool) {
	tail, ok := strings.CutPrefix(commandSubject, CommandPrefix+".")
	if !ok {
		return "", false
	}
	return EndpointPrefix + "." + tail, true
}

// ValidateCount checks a --partitions value.
func ValidateCount(n int) error {
	if n < 1 || n > MaxCount {
		return fmt.Errorf("--partitions must be between 1 and %d, not %d", MaxCount, n)
	}
	return nil
}

// Of is the partition of userID among n: FNV-1a (32 bits) of the user id
// token, modulo n, exactly as nats-server computes {{partition(n,2)}}.
func Of(userID string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(userID))
	return int(h.Sum32() % uint32(n))
}

// Transform is the stream's subject transform destination for n
// partitions: passkeys.cmd.<op>.<user> is stored as
// passkeys.part.<partition>.<op>.<user>.
func Transform(n int) (source, destination string) {
	return CommandPrefix + ".*.*", StoredPrefix + ".{{partition(" + strconv.Itoa(n) + ",2)}}.{{wildcard(1)}}.{{wildcard(2)}}"
}

// Filter is the subject filter of partition p's stored commands.
func Filter(p int) string { return StoredPrefix + "." + strconv.Itoa(p) + ".>" }

// Name is how logs, metrics, files and consumers name partition p.
func Name(p int) string { return fmt.Sprintf("p%03d", p) }

// ErrNotStored tells that a subject is not a partition's stored subject.
var ErrNotStored = errors.New("not a partitioned command subject")

// Original maps a stored subject back to the subject its publisher used:
// passkeys.part.3.remove.u1 is partition 3's passkeys.cmd.remove.u1. A
// command stored before the stream was partitioned keeps the subject it
// was published under (passkeys.cmd...): only the upgrade reads those.
func Original(stored string) (int, string, error) {
	rest, ok := strings.CutPrefix(stored, StoredPrefix+".")
	if !ok {
		return 0, "", ErrNotStored
	}
	num, tail, ok := strings.Cut(rest, ".")
	p, err := strconv.Atoi(num)
	if !ok || err != nil || p < 0 || tail == ControlName {
		return 0, "", ErrNotStored
	}
	return p, CommandPrefix + "." + tail, nil
}

// rank orders members by their rendezvous (highest random weight) score
// for partition p, best first: every worker that sees the same members
// ranks them alike, and a member's leaving changes no other's rank.
func rank(p int, members []string) []string {
	type scored struct {
		m string
		s uint64
	}
	all := make([]scored, 0, len(members))
	for _, m := range members {
		h := fnv.New64a()
		_, _ = h.Write([]byte(m))
		_, _ = h.Write([]byte{0})
		_, _ = h.Write([]byte(strconv.Itoa(p)))
		all = append(all, scored{m, mix(h.Sum64())})
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].s != all[j].s {
			return all[i].s > all[j].s
		}
		return all[i].m < all[j].m
	})
	out := make([]string, len(all))
	for i, x := range all {
		out[i] = x.m
	}
	return out
}

// mix spreads FNV's output (splitmix64's finaliser), so that members whose
// names differ in one character do not get correlated scores.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// OwnedAvoiding lists the partitions of n that the assignment gives to
// member: rendezvous with bounded load. Partition by partition, in order,
// each goes to the best-ranked member (rank) that still has room:
// n/members each, and one more for the first n%members members to need
// it. So every member serves n/members or one more, and every worker that
// sees the same members computes the same assignment.
//
// A member that avoids a partition (avoid, when set, says so; a worker on
// which the partition failed lately) is passed over for it: the partition
// goes to the best-ranked member that does not avoid it and has room, else
// to the best-ranked one that does not avoid it (room or not); only when
// every member avoids it is avoiding ignored.
func OwnedAvoiding(member string, members []string, n int, avoid func(member string, p int) bool) []int {
	members = SortedMembers(members)
	if len(members) == 0 {
		return nil
	}
	floor, extra := n/len(members), n%len(members) // extra members may serve floor+1
	load := map[string]int{}
	var ps []int
	for p := range n {
		candidates := rank(p, members)
		if avoid != nil {
			var willing []string
			for _, m := range candidates {
				if !avoid(m, p) {
					willing = append(willing, m)
				}
			}
			if len(willing) > 0 {
				candidates = willing
			}
		}
		chosen := candidates[0] // when every candidate is full
		for _, m := range candidates {
			if load[m] < floor || (load[m] == floor && extra > 0) {
				if load[m] == floor {
					extra--
				}
				chosen = m
				break
			}
		}
		load[chosen]++
		if chosen == member {
			ps = append(ps, p)
		}
	}
	return ps
}

// SortedMembers returns members sorted and without repeats.
func SortedMembers(members []string) []string {
	out := append([]string(nil), members...)
	sort.Strings(out)
	k := 0
	for i, m := range out {
		if i == 0 || m != out[k-1] {
			out[k] = m
			k++
		}
	}
	return out[:k]
}
