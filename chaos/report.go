package chaos

import (
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Report is what a campaign did and found.
type Report struct {
	Seed     uint64        `json:"seed"`
	Duration time.Duration `json:"duration"`
	// Ops counts the clients' operations by kind, and by result.
	Ops     map[string]int `json:"ops"`
	Results map[string]int `json:"results"`
	// Faults counts the faults injected, by kind.
	Faults     map[string]int `json:"faults"`
	FaultList  []Fault        `json:"faultList"`
	FaultError []string       `json:"faultErrors,omitempty"`
	// Linearizable is porcupine's verdict on the per-user model.
	Linearizable string `json:"linearizable"`
	// Anomalies are the invariants' findings, and every repeat whose bytes
	// differed.
	Anomalies []string `json:"anomalies"`
	// AskedAgain is how many changes had no telling answer and were
	// resolved by asking again with the same Nats-Msg-Id; Unresolved, how
	// many stayed without one even then.
	AskedAgain int `json:"askedAgain"`
	Unresolved int `json:"unresolved"`
	// Repeats is how many changes were asked again to compare their bytes.
	Repeats int `json:"repeats"`
	// Unavailable is, per fault kind, the longest time one user's
	// operations all failed or waited, from the first call of such a run
	// to the answer that ended it (a stall is put down to every fault that
	// was on, or had healed less than 10 s before, while it lasted: with
	// faults a few seconds apart, one stall is often put down to two).
	Unavailable map[string]time.Duration `json:"unavailable"`
	// UnavailableAlone is the same, counting only the stalls put down to
	// one fault that nothing else was on with (or healed less than 10 s
	// before): what the goal of one fault at a time is measured by.
	UnavailableAlone map[string]time.Duration `json:"unavailableAlone"`
	// P50, P99 and Max are the latencies of the operations that got a
	// telling answer, retries included.
	P50 time.Duration `json:"p50"`
	P99 time.Duration `json:"p99"`
	Max time.Duration `json:"max"`
	// Recovery is how long after the faults every user was served again.
	Recovery time.Duration `json:"recovery"`
	// Exits are programs that exited by themselves, with their last words.
	Exits []string `json:"exits,omitempty"`
	// Repairs are what the campaign did as the operator, on a program's
	// word: `worker provision --reset-leases` when a worker said the lease
	// bucket was silent (NATS left it without a leader).
	Repairs []string `json:"repairs,omitempty"`
	// RetiredRefused is how many calls with a token of the retired key,
	// sent after the operator retired it, were refused (campaign.rotate).
	RetiredRefused int `json:"retiredRefused"`
	// Fsyncs is how many fsyncs each machine's disk saw; Dropped, how many
	// bytes (whole pages) its power cuts lost; Detached, how many of its
	// cuts found a process still using it (a cut that was not clean).
	Fsyncs     map[string]int64 `json:"fsyncs,omitempty"`
	Dropped    map[string]int64 `json:"dropped,omitempty"`
	Detached   int64            `json:"detached,omitempty"`
	FailureDir string           `json:"failureDir,omitempty"`
}

func newReport(cfg *Config) *Report {
	return &Report{Seed: cfg.Seed, Duration: cfg.Duration, Ops: map[string]int{}, Results: map[string]int{},
		Faults: map[string]int{}, Unavailable: map[string]time.Duration{}, UnavailableAlone: map[string]time.Duration{}, Fsyncs: map[string]int64{}, Dropped: map[string]int64{}}
}

// OK tells whether the campaign found nothing wrong.
// A power cut that was not clean (a process still used the disk) or a
// fault that failed to be injected or healed fails the campaign too: its
// history does not show what it claims to.
func (r *Report) OK() bool {
	return r.Linearizable == string(porcupine.Ok) && len(r.Anomalies) == 0 && r.Detached == 0 && len(r.FaultError) == 0
}

// addExit files a program that exited by itself, with its log's last line.
func (r *Report) addExit(name, said string) {
	lines := strings.Split(strings.TrimSpace(said), "\n")
	r.Exits = append(r.Exits, name+": "+lines[len(lines)-1])
}

// noteRepeat files what asking again for op gave: its outcome, where its
// first answer did not tell, or an anomaly where the bytes differ.
func (r *Report) noteRepeat(op, again *Op) {
	r.Repeats++
	switch {
	case op.Result.Status == StatusUnknown && again.Result.Status != StatusUnknown:
		op.Result, op.GaveUp, op.Return, op.Resolved = again.Result, op.Return, again.Return, true
		r.AskedAgain++
	case op.Result.Status == StatusUnknown:
		r.Unresolved++
	case again.Result.Status == StatusUnknown:
		r.Anomalies = append(r.Anomalies, fmt.Sprintf("%s: asked again with Nats-Msg-Id %s: no answer (%s)", op.User, op.MsgID, again.Result.Err))
	default:
		if d := repeatMismatch(op, again.Result.Body); d != "" {
			r.Anomalies = append(r.Anomalies, d)
		}
	}
}

// fill counts the history and the faults and takes the checker's verdict.
func (r *Report) fill(ops []*Op, faults []Fault, v *Verdict, c *cluster) {
	r.FaultList = faults
	for _, f := range faults {
		r.Faults[f.Kind]++
		if f.Err != "" {
			r.FaultError = append(r.FaultError, f.Kind+" "+f.Target+": "+f.Err)
		}
	}
	var lat []time.Duration
	for _, op := range ops {
		r.Ops[op.Kind]++
		r.Results[op.Kind+" "+op.Result.Status+" "+op.Result.ErrID]++
		if op.Result.Status != StatusUnknown && !op.Resolved {
			lat = append(lat, time.Duration(op.Return-op.Call))
		}
	}
	slices.Sort(lat)
	if n := len(lat); n > 0 {
		r.P50, r.P99, r.Max = lat[n/2], lat[n*99/100], lat[n-1]
	}
	r.Linearizable = string(v.Linearizable)
	r.Anomalies = append(r.Anomalies, v.Anomalies...)
	r.Unavailable, r.UnavailableAlone = unavailability(ops, faults)
	for _, m := range c.machines {
		if m.fs != nil {
			st := m.fs.Stats()
			r.Fsyncs[fmt.Sprintf("m%d", m.i+1)], r.Dropped[fmt.Sprintf("m%d", m.i+1)] = st.Fsyncs, st.BytesDropped
			r.Detached += st.Detached
		}
	}
}

// unavailability is, per fault kind, the longest stall of one user: a run
// of operations that got no telling answer, ended by one that did (a
// telling answer that took over a second is a stall of its own), as the
// time in which one of them was in flight: a time when the user had no
// operation in flight is no part of it.
func unavailability(ops []*Op, faults []Fault) (all, alone map[string]time.Duration) {
	byUser := map[string][]*Op{}
	for _, op := range ops {
		byUser[op.User] = append(byUser[op.User], op)
	}
	all, alone = map[string]time.Duration{}, map[string]time.Duration{}
	for _, uops := range byUser {
		slices.SortFunc(uops, func(a, b *Op) int { return int(a.Call - b.Call) })
		var run [][2]int64 // the failed operations' spans
		for _, op := range uops {
			if op.Resolved || op.Result.Status == StatusUnknown {
				end := op.Return
				if op.Resolved {
					end = op.GaveUp
				}
				run = append(run, [2]int64{op.Call, end})
				continue
			}
			spans := append(run, [2]int64{op.Call, op.Return})
			from := min(op.Call, spans[0][0])
			run = nil
			if stall := covered(spans); stall > time.Second {
				blamed := blame(faults, from, op.Return)
				for _, f := range blamed {
					all[f.Kind] = max(all[f.Kind], stall)
				}
				if len(blamed) == 1 && len(blame(faults, blamed[0].Start, blamed[0].End)) == 1 {
					alone[blamed[0].Kind] = max(alone[blamed[0].Kind], stall)
				}
			}
		}
	}
	return all, alone
}

// covered is how long the union of spans (sorted by start) lasts.
func covered(spans [][2]int64) time.Duration {
	var total, from, to int64
	for i, s := range spans {
		switch {
		case i == 0:
			from, to = s[0], s[1]
		case s[0] > to:
			total += to - from
			from, to = s[0], s[1]
		default:
			to = max(to, s[1])
		}
	}
	return time.Duration(total + to - from)
}

// blameAfter is how long after its heal a fault is still blamed for a
// stall: a takeover waits out a lease, an ack wait, a leader election.
const blameAfter = 10 * time.Second

// blame is the faults on (or healed less than blameAfter before) while
// [from, to] lasted, or one of kind "none".
func blame(faults []Fault, from, to int64) []Fault {
	var on []Fault
	for _, f := range faults {
		if f.Start <= to && f.End+int64(blameAfter) >= from {
			on = append(on, f)
		}
	}
	if len(on) == 0 {
		on = []Fault{{Kind: "none"}}
	}
	return on
}

func (r *Report) write(path string) error {
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, raw, 0o600)
}

// String is the report for a person.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d, %v: %d operations %v\n", r.Seed, r.Duration, sum(r.Ops), r.Ops)
	fmt.Fprintf(&b, "faults: %d %v\n", sum(r.Faults), r.Faults)
	for _, k := range sortedNames(r.Results) {
		fmt.Fprintf(&b, "  %-40s %d\n", k, r.Results[k])
	}
	fmt.Fprintf(&b, "model (porcupine): %s; anomalies: %d\n", r.Linearizable, len(r.Anomalies))
	for _, a := range r.Anomalies[:min(len(r.Anomalies), 20)] {
		fmt.Fprintf(&b, "  ANOMALY %s\n", a)
	}
	fmt.Fprintf(&b, "asked again: %d resolved, %d unresolved, %d repeats compared byte for byte\n", r.AskedAgain, r.Unresolved, r.Repeats)
	fmt.Fprintf(&b, "latency of answered operations: p50 %v, p99 %v, max %v; every user served again %v after the faults\n",
		r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond), r.Recovery.Round(time.Millisecond))
	fmt.Fprintf(&b, "longest stall of one user, by fault kind:")
	for _, k := range sortedNames(r.Unavailable) {
		fmt.Fprintf(&b, " %s %.1fs", k, r.Unavailable[k].Seconds())
	}
	fmt.Fprintf(&b, "\n  ... by a fault alone:")
	for _, k := range sortedNames(r.UnavailableAlone) {
		fmt.Fprintf(&b, " %s %.1fs", k, r.UnavailableAlone[k].Seconds())
	}
	fmt.Fprintf(&b, "\nper disk: fsyncs %v, bytes lost at power cuts %v, cuts not clean %d\n", r.Fsyncs, r.Dropped, r.Detached)
	for _, e := range r.Exits {
		fmt.Fprintf(&b, "exited by itself: %.300s\n", e)
	}
	fmt.Fprintf(&b, "tokens of the retired key refused after its retirement: %d\n", r.RetiredRefused)
	for _, e := range r.Repairs {
		fmt.Fprintf(&b, "operator repair: %.300s\n", e)
	}
	for _, e := range r.FaultError {
		fmt.Fprintf(&b, "fault error: %s\n", e)
	}
	return b.String()
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func sortedNames[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// newRand is the nemesis's generator: the seed alone decides its draws.
func newRand(seed uint64) *mrand.Rand { return mrand.New(mrand.NewPCG(seed, 0x6e656d65736973)) }

// writeVisualization writes porcupine's picture of the history.
func writeVisualization(path string, v *Verdict) error {
	return porcupine.VisualizePath(model(), v.info, path)
}
