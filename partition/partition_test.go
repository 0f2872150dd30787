package partition

import (
	"fmt"
	"slices"
	"testing"
)

func TestOriginal(t *testing.T) {
	for _, c := range []struct {
		stored, want string
		p            int
		err          bool
	}{
		{"passkeys.part.3.remove.u1", "passkeys.cmd.remove.u1", 3, false},
		{"passkeys.part.0.sync.a-b", "passkeys.cmd.sync.a-b", 0, false},
		{"passkeys.cmd.remove.u1", "", 0, true}, // from before partitions: the upgrade's alone
		{"passkeys.part.x.remove.u1", "", 0, true},
		{"passkeys.part.-1.remove.u1", "", 0, true},
		{"passkeys.part.3", "", 0, true},
		{"other.subject", "", 0, true},
	} {
		p, got, err := Original(c.stored)
		if (err != nil) != c.err || got != c.want || (!c.err && p != c.p) {
			t.Errorf("Original(%q) = %d, %q, %v; want %d, %q, error %v", c.stored, p, got, err, c.p, c.want, c.err)
		}
	}
}

// Rendezvous: every member ranks alike whatever order it sees the
// members in; the first choices spread about evenly; when a member leaves,
// the others keep their order.
func TestRank(t *testing.T) {
	members := []string{"w-a1", "w-b2", "w-c3"}
	const n = 240
	count := map[string]int{}
	for p := range n {
		r := rank(p, members)
		if r2 := rank(p, []string{"w-c3", "w-a1", "w-b2"}); !slices.Equal(r, r2) {
			t.Fatalf("partition %d: %v, or %v with the members in another order", p, r, r2)
		}
		count[r[0]]++
		without := slices.DeleteFunc(slices.Clone(r), func(m string) bool { return m == "w-b2" })
		if got := rank(p, []string{"w-a1", "w-c3"}); !slices.Equal(got, without) {
			t.Errorf("partition %d: %v without w-b2, want %v", p, got, without)
		}
	}
	for _, m := range members {
		if count[m] < n/3-n/6 || count[m] > n/3+n/6 {
			t.Errorf("%s ranks first for %d of %d partitions: %v", m, count[m], n, count)
		}
	}
	if len(rank(0, nil)) != 0 || OwnedAvoiding("x", nil, 8, nil) != nil {
		t.Error("an owner without members")
	}
}

// OwnedAvoiding spreads the partitions evenly (rendezvous with a bound on each
// member's load), the same for every member, for every set of members.
func TestOwnedIsBalanced(t *testing.T) {
	for m := 1; m <= 5; m++ {
		for trial := range 200 {
			var members []string
			for i := range m {
				members = append(members, fmt.Sprintf("vm-%d-%d", trial, i))
			}
			for _, n := range []int{1, 3, 8, 16} {
				seen := map[int]string{}
				for _, mem := range members {
					got := OwnedAvoiding(mem, members, n, nil)
					if !slices.IsSorted(got) {
						t.Fatalf("OwnedAvoiding not sorted: %v", got)
					}
					if lo, hi := n/m, (n+m-1)/m; len(got) < lo || len(got) > hi {
						t.Fatalf("%d members, %d partitions: %s owns %d", m, n, mem, len(got))
					}
					for _, p := range got {
						if other, ok := seen[p]; ok {
							t.Fatalf("partition %d owned by %s and %s", p, other, mem)
						}
						seen[p] = mem
					}
				}
				if len(seen) != n {
					t.Fatalf("%d members, %d partitions: %d owned", m, n, len(seen))
				}
				if n >= m {
					for _, mem := range members {
						if len(OwnedAvoiding(mem, members, n, nil)) == 0 {
							t.Fatalf("%d members, %d partitions: %s owns none", m, n, mem)
						}
					}
				}
			}
		}
	}
}

func TestSortedMembers(t *testing.T) {
	if got := fmt.Sprint(SortedMembers([]string{"b", "a", "b", "c", "a"})); got != "[a b c]" {
		t.Errorf("SortedMembers: %s", got)
	}
}

func TestValidateCount(t *testing.T) {
	for n, ok := range map[int]bool{0: false, 1: true, 8: true, MaxCount: true, MaxCount + 1: false, -3: false} {
		if (ValidateCount(n) == nil) != ok {
			t.Errorf("ValidateCount(%d): %v", n, ValidateCount(n))
		}
	}
}

// A partition a member avoids (it failed there lately) goes to another
// member, even one that has its share already; when every member avoids it
// the assignment is as without avoiding.
func TestOwnedAvoiding(t *testing.T) {
	members := []string{"a", "b", "c"}
	var p int
	for p = range 8 {
		if slices.Contains(OwnedAvoiding("a", members, 8, nil), p) {
			break
		}
	}
	avoidA := func(m string, q int) bool { return m == "a" && q == p }
	if slices.Contains(OwnedAvoiding("a", members, 8, avoidA), p) {
		t.Fatalf("a still owns partition %d it avoids", p)
	}
	if !slices.Contains(OwnedAvoiding("b", members, 8, avoidA), p) && !slices.Contains(OwnedAvoiding("c", members, 8, avoidA), p) {
		t.Fatalf("nobody owns partition %d", p)
	}
	all := func(string, int) bool { return true }
	for _, m := range members {
		if got, want := OwnedAvoiding(m, members, 8, all), OwnedAvoiding(m, members, 8, nil); !slices.Equal(got, want) {
			t.Errorf("%s avoiding everything, as everyone does: %v, want %v", m, got, want)
		}
	}
}
