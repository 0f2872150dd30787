package chaos

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"slices"
	"sync"
	"time"
)

// The kinds of fault the nemesis injects.
const (
	// FaultWorkerKill: kill -9 a worker; it starts again on its directory.
	FaultWorkerKill = "worker-kill"
	// FaultWorkerWipe: kill -9 a worker; it starts again on an empty one.
	FaultWorkerWipe = "worker-wipe"
	// FaultWorkerFreeze: SIGSTOP a worker for 1 to 20 s, then SIGCONT.
	FaultWorkerFreeze = "worker-freeze"
	// FaultWorkerCut: no byte between a worker and any NATS node for 2 to 20 s.
	FaultWorkerCut = "worker-cut"
	// FaultWorkerClock: a worker's clock jumps ahead by 1 minute to 10 days
	// or back by 1 minute to 3 days, or runs 1.5 to 10 times too fast, for
	// 1 to 20 s; then it is right again (worker --fault-clock).
	FaultWorkerClock = "worker-clock"
	// FaultNodeKill: kill -9 a NATS node; it starts again on its store.
	FaultNodeKill = "node-kill"
	// FaultNodeFreeze: SIGSTOP a NATS node for 1 to 20 s, then SIGCONT.
	FaultNodeFreeze = "node-freeze"
	// FaultRouteCut: no byte between two NATS nodes for 2 to 20 s.
	FaultRouteCut = "route-cut"
	// FaultPowerOne: the power of one machine (its node and its worker)
	// is cut: both die and its disk loses what was not fsynced.
	FaultPowerOne = "power-one"
	// FaultPowerAll: the power of every machine is cut at once.
	FaultPowerAll = "power-all"
)

// AllFaults is every kind, in the order reports list them.
var AllFaults = []string{FaultWorkerKill, FaultWorkerWipe, FaultWorkerFreeze, FaultWorkerCut, FaultWorkerClock, FaultNodeKill,
	FaultNodeFreeze, FaultRouteCut, FaultPowerOne, FaultPowerAll}

// Fault is one fault as injected: its kind, what it hit, when it began
// and when it was healed (ns since the campaign's start).
type Fault struct {
	Kind   string `json:"kind"`
	Target string `json:"target"`
	Start  int64  `json:"start"`
	End    int64  `json:"end"`
	Err    string `json:"err,omitempty"`
}

// nemesis injects the faults of a seeded schedule: the seed decides the
// kinds, targets and durations, not the interleaving with the clients.
type nemesis struct {
	c     *cluster
	rng   *mrand.Rand
	kinds []string
	alone bool // one fault at a time, after a longer quiet
	start time.Time
	log   func(format string, args ...any)
	// ctx is run's: once it ends, a fault being held is healed at once,
	// so that a campaign ends on time.
	ctx    context.Context
	mu     sync.Mutex
	faults []Fault
}

func (n *nemesis) now() int64 { return int64(time.Since(n.start)) }

// span is a random duration between lo and hi.
func (n *nemesis) span(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(n.rng.Int64N(int64(hi-lo)+1))
}

// run injects faults until ctx ends: a quiet 2 to 6 s, then one fault, or
// two at once one time in five, each held and healed (alone: a quiet 12 to
// 16 s, and one fault).
func (n *nemesis) run(ctx context.Context) {
	n.ctx = ctx
	quiet, most := 2*time.Second, 6*time.Second
	if n.alone {
		quiet, most = 12*time.Second, 16*time.Second
	}
	for {
		if !sleepCtx(ctx, n.span(quiet, most)) {
			return
		}
		first, kind, on := n.pick(nil, -1)
		plans := []func(){first}
		if !n.alone && n.rng.IntN(5) == 0 && kind != FaultPowerAll {
			// A second fault at once, on another machine: one machine's
			// processes and disk take one fault at a time.
			second, _, _ := n.pick([]string{FaultPowerAll}, on)
			plans = append(plans, second)
		}
		var wg sync.WaitGroup
		for _, p := range plans {
			wg.Go(p)
		}
		wg.Wait()
	}
}

// pick draws a fault (not one of except, on a machine other than avoid)
// and its parameters now, so that the seed alone decides them, and
// returns the function that injects it, its kind and its machine.
func (n *nemesis) pick(except []string, avoid int) (func(), string, int) {
	kinds := slices.DeleteFunc(slices.Clone(n.kinds), func(k string) bool { return slices.Contains(except, k) })
	if len(kinds) == 0 {
		return func() {}, "", -1
	}
	kind := kinds[n.rng.IntN(len(kinds))]
	m := n.c.machines[n.rng.IntN(3)]
	if m.i == avoid {
		m = n.c.machines[(m.i+1)%3]
	}
	other := n.c.machines[(m.i+1+n.rng.IntN(2))%3]
	hold := n.span(time.Second, 20*time.Second)
	down := n.span(0, 5*time.Second)
	return n.plan(kind, m, other, hold, down), kind, m.i
}

// plan is the function that injects a fault of kind on machine m (and
// other, for a route).
func (n *nemesis) plan(kind string, m, other *machine, hold, down time.Duration) func() {
	switch kind {
	case FaultWorkerKill, FaultWorkerWipe:
		return n.inject(kind, m.worker.name, func() error { return n.restartWorker(m, down, kind == FaultWorkerWipe) })
	case FaultWorkerFreeze:
		return n.inject(kind, m.worker.name, func() error { m.worker.freeze(); n.wait(hold); m.worker.thaw(); return nil })
	case FaultWorkerCut:
		return n.inject(kind, m.worker.name, func() error { n.cut(m.toNode, max(hold, 2*time.Second)); return nil })
	case FaultWorkerClock:
		spec := n.clockFault()
		return n.inject(kind, m.worker.name+" "+spec, func() error { return n.skewClock(m, spec, hold) })
	case FaultNodeKill:
		return n.inject(kind, m.nats.name, func() error { m.nats.kill(); n.wait(down); return n.c.startNode(m) })
	case FaultNodeFreeze:
		return n.inject(kind, m.nats.name, func() error { m.nats.freeze(); n.wait(hold); m.nats.thaw(); return nil })
	case FaultRouteCut:
		links := []*proxy{m.routeTo[other.i], other.routeTo[m.i]}
		return n.inject(kind, m.nats.name+"-"+other.nats.name, func() error { n.cut(links, max(hold, 2*time.Second)); return nil })
	case FaultPowerOne:
		return n.inject(kind, fmt.Sprintf("m%d", m.i+1), func() error { return n.c.powerCut([]*machine{m}) })
	case FaultPowerAll:
		return n.inject(kind, "all", func() error { return n.c.powerCut(n.c.machines) })
	}
	panic("chaos: no fault kind " + kind) // Run checked the kinds
}

// inject returns the function that runs one fault and records it.
func (n *nemesis) inject(kind, target string, fault func() error) func() {
	return func() {
		f := Fault{Kind: kind, Target: target, Start: n.now()}
		n.log("fault %s on %s", kind, target)
		if err := fault(); err != nil {
			f.Err = err.Error()
			n.log("fault %s on %s: %v", kind, target, err)
		}
		f.End = n.now()
		n.mu.Lock()
		n.faults = append(n.faults, f)
		n.mu.Unlock()
	}
}

// restartWorker kills machine m's worker, and starts it again after down
// on its directory or, with wipe, on an empty one.
func (n *nemesis) restartWorker(m *machine, down time.Duration, wipe bool) error {
	m.worker.kill()
	if wipe {
		if err := os.RemoveAll(m.workerData()); err != nil {
			return err
		}
	}
	n.wait(down)
	return m.worker.start()
}

// clockFault draws how a worker's clock is off, as its --fault-clock file
// spells it: a jump ahead of 1 minute to 10 days, back of 1 minute to 3
// days, or a rate.
func (n *nemesis) clockFault() string {
	switch n.rng.IntN(3) {
	case 0:
		return fmt.Sprintf("offset=%v", n.span(time.Minute, 240*time.Hour).Round(time.Second)) // past the 7 days of retention too
	case 1:
		return fmt.Sprintf("offset=-%v", n.span(time.Minute, 72*time.Hour).Round(time.Second))
	}
	return fmt.Sprintf("rate=%v", []float64{1.5, 2, 4, 10}[n.rng.IntN(4)])
}

// skewClock puts machine m's worker's clock off as spec says for d, then
// right again.
func (n *nemesis) skewClock(m *machine, spec string, d time.Duration) error {
	tmp := m.clockFile() + ".tmp"
	if err := os.WriteFile(tmp, []byte(spec+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, m.clockFile()); err != nil {
		return err
	}
	n.wait(d)
	return os.Remove(m.clockFile())
}

// cut stops every byte on links for d.
func (n *nemesis) cut(links []*proxy, d time.Duration) {
	for _, l := range links {
		l.Cut()
	}
	n.wait(d)
	for _, l := range links {
		l.Heal()
	}
}

// Faults is what was injected, in the order the faults ended.
func (n *nemesis) Faults() []Fault {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.faults)
}

// wait holds a fault for d, or until the campaign's time is up.
func (n *nemesis) wait(d time.Duration) { sleepCtx(n.ctx, d) }

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
