// Package chaos is the fault campaign: three nats-server processes in a
// cluster and three worker processes, each machine's data on a disk that
// loses what was not fsynced when its power is cut, clients that remove,
// list and sync through the client package, and a nemesis that kills,
// freezes, cuts off and powers down machines on a seeded schedule. The
// whole history is then checked against a per-user model (porcupine) and
// the contract's invariants. A seed replays the fault schedule, not the
// interleaving.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/client"
)

// Config is one campaign.
type Config struct {
	Seed     uint64
	Duration time.Duration // how long the clients and the nemesis run
	Faults   []string      // the kinds the nemesis draws from (AllFaults when empty)
	Users    int
	Clients  int
	// Dir holds the machines' disks, configurations and logs; a failure's
	// folder is written inside it.
	Dir string
	// NATSConf is the nats.conf every node includes (the shipped one).
	NATSConf string
	// NATSServer and Worker are the binaries.
	NATSServer, Worker string
	// Power puts every machine's data on a lazyfs mount (FUSE), which the
	// power faults need.
	Power bool
	// Without is the worker's --without: mechanisms switched off, to
	// measure what each one earns.
	Without []string
	// WorkerArgs are more flags for every worker (--store-nosync).
	WorkerArgs []string
	// Alone injects one fault at a time, never two, each after 12 to 16 s
	// of quiet: the measure of unavailability against the goal of one
	// fault at a time, every fault's stall its own.
	Alone bool
	// CheckTimeout bounds porcupine's search.
	CheckTimeout time.Duration
	Log          io.Writer
}

func (cfg *Config) defaults() {
	if len(cfg.Faults) == 0 {
		cfg.Faults = AllFaults
	}
	if cfg.Users == 0 {
		cfg.Users = 40
	}
	if cfg.Clients == 0 {
		cfg.Clients = 6
	}
	if cfg.CheckTimeout == 0 {
		cfg.CheckTimeout = 2 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
}

// CheckFaults tells whether every fault kind named is one, and can be
// injected here (a power fault needs Power).
func (cfg *Config) CheckFaults() error {
	for _, kind := range cfg.Faults {
		if !slices.Contains(AllFaults, kind) {
			return fmt.Errorf("no fault kind %q (the kinds: %v)", kind, AllFaults)
		}
		if PowerFaults(kind) && !cfg.Power {
			return fmt.Errorf("fault %s needs the lazyfs disks: FUSE (root and /dev/fuse)", kind)
		}
	}
	return nil
}

// campaign is one run's state.
type campaign struct {
	cfg   *Config
	c     *cluster
	w     *workload
	nem   *nemesis
	start time.Time
	rep   *Report
	ncs   []*nats.Conn
	// lastReset is when the campaign, as the operator, last reset the
	// lease bucket (the supervisor's goroutine only).
	lastReset time.Time
}

func (k *campaign) logf(format string, args ...any) {
	fmt.Fprintf(k.cfg.Log, "%7.1fs  %s\n", time.Since(k.start).Seconds(), fmt.Sprintf(format, args...))
}

// Run runs a campaign and checks its history. The error is a campaign that
// could not run (a server that would not start); anomalies are in the
// report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	if err := cfg.CheckFaults(); err != nil {
		return nil, err
	}
	k := &campaign{cfg: &cfg, start: time.Now(), rep: newReport(&cfg)}
	k.logf("seed %d: %v, %d users, %d clients, faults %v, power faults %v, without %v, worker args %v, alone %v", cfg.Seed, cfg.Duration, cfg.Users,
		cfg.Clients, cfg.Faults, cfg.Power, cfg.Without, cfg.WorkerArgs, cfg.Alone)
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	c, err := newCluster(&cfg)
	k.c = c
	defer func() {
		for _, nc := range k.ncs {
			nc.Close()
		}
		if err := c.close(); err != nil {
			k.logf("closing the cluster: %v", err)
		}
	}()
	if err != nil {
		return nil, err
	}
	if err := k.setUp(ctx); err != nil {
		return nil, err
	}
	k.runFaults(ctx)
	if err := k.settle(ctx); err != nil {
		// Nothing more can be asked: the history so far is checked, and
		// the users left unserved are an anomaly of their own.
		k.rep.Anomalies = append(k.rep.Anomalies, err.Error())
	} else {
		k.resolve()
		k.finalReads()
	}
	ops := k.w.hist.snapshot()
	k.logf("checking %d operations", len(ops))
	v := check(ops, cfg.CheckTimeout)
	k.rep.fill(ops, k.nem.Faults(), v, k.c)
	if !k.rep.OK() {
		k.rep.FailureDir, err = k.writeFailure(ops, v)
		return k.rep, err
	}
	// A passing campaign's history too, for whoever studies its figures
	// (cmd/chaos removes the folder unless it was given one).
	if err := writeHistory(filepath.Join(cfg.Dir, "history.jsonl"), ops); err != nil {
		return k.rep, err
	}
	return k.rep, k.rep.write(filepath.Join(cfg.Dir, "report.json"))
}

// setUp starts the nodes, provisions the streams and the keys as the
// operator does, starts the workers, and syncs every user once.
func (k *campaign) setUp(ctx context.Context) error {
	k.logf("starting three nats-server nodes")
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i, m := range k.c.machines {
		wg.Go(func() { errs[i] = k.c.startNode(m) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	service, err := k.connect("passkeys-service")
	if err != nil {
		return err
	}
	admin, err := k.connect("passkeys-admin")
	if err != nil {
		return err
	}
	jwks := filepath.Join(k.cfg.Dir, "jwks.json")
	if k.w, err = newWorkload(k.cfg, jwks, service, admin, k.start); err != nil {
		return err
	}
	k.logf("worker provision --replicas 3")
	if err := k.provision(ctx, "--jwks", jwks, "--issuer", issuer, "--audience", audience, "--rules", "2"); err != nil {
		return err
	}
	for _, m := range k.c.machines {
		if err := m.worker.start(); err != nil {
			return err
		}
	}
	k.logf("syncing %d users", len(k.w.users))
	for _, u := range k.w.users {
		// One Nats-Msg-Id for every attempt, each recorded: an attempt
		// without an answer may have been applied.
		msgID := newMsgID()
		for try := 0; ; try++ {
			op := &Op{Client: k.cfg.Clients, Kind: OpSync, User: u.id, Set: u.passkeys(0), Password: u.password, MsgID: msgID}
			k.w.do(op, u)
			k.w.hist.add(op)
			if op.Result.Status == StatusOK {
				break
			}
			if try == 5 {
				return fmt.Errorf("the first sync of %s: %s %s %s", u.id, op.Result.Status, op.Result.ErrID, op.Result.Err)
			}
		}
	}
	return nil
}

// provision runs `worker provision --replicas 3` as the operator does,
// with extra flags.
func (k *campaign) provision(ctx context.Context, extra ...string) error {
	args := append([]string{"provision", "--nats-url", k.c.natsURLs("passkeys-provisioner"), "--replicas", "3"}, extra...)
	out, err := exec.CommandContext(ctx, k.cfg.Worker, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("worker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// connect is a client connection as user, to every node directly.
func (k *campaign) connect(user string) (*nats.Conn, error) {
	nc, err := nats.Connect(k.c.natsURLs(user), nats.CustomInboxPrefix("_INBOX_"+user), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.Name("chaos-"+user))
	if err != nil {
		return nil, fmt.Errorf("connect as %s: %w", user, err)
	}
	k.ncs = append(k.ncs, nc)
	return nc, nil
}

// runFaults runs the clients and the nemesis for the campaign's duration,
// restarting any program that exits by itself as a supervisor would (and
// reporting it), then heals every fault.
func (k *campaign) runFaults(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, k.cfg.Duration)
	defer cancel()
	k.nem = &nemesis{c: k.c, rng: newRand(k.cfg.Seed), kinds: k.cfg.Faults, start: k.start, log: k.logf, alone: k.cfg.Alone}
	var wg sync.WaitGroup
	wg.Go(func() { k.nem.run(ctx) })
	for id := range k.cfg.Clients {
		wg.Go(func() { k.w.run(ctx, id) })
	}
	wg.Go(func() { k.supervise(ctx) })
	wg.Go(func() { k.rotate(ctx) })
	wg.Wait()
	k.c.healAll()
	k.logf("faults over: %d operations", len(k.w.hist.snapshot()))
}

// rotate is the operator's key rotation, a quarter into the faults: the new
// key is added (`worker provision --jwks` with both keys), the clients
// take tokens of the new key, and once every call that may still carry a
// token of the old key has ended (its retries included), the old key is
// retired (provision with the new key alone). Both entries also switch
// the verification rule to ZIP 215 (`--verify zip215`), so that the
// faults after them meet batch verification, and the rules to version 2
// (`--rules 2`). From the retirement's control entry on, a token of
// the retired key is refused in every partition, by every worker: probed
// after it, one call per user; an answer other than AUTH-KEY-UNKNOWN is an
// anomaly.
func (k *campaign) rotate(ctx context.Context) {
	if !sleepCtx(ctx, k.cfg.Duration/4) || !k.provisionKeys(ctx, k.w.keys[0], k.w.keys[1]) {
		return
	}
	old, err := k.w.useKey(k.w.keys[1])
	if err != nil {
		k.rep.FaultError = append(k.rep.FaultError, "key rotation: "+err.Error())
		return
	}
	if !k.w.calls.next(ctx) || !k.provisionKeys(ctx, k.w.keys[1]) {
		return
	}
	refused, unanswered := 0, 0
	for _, u := range k.w.users {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		_, err := k.w.service.Remove(cctx, u.id, "retired-key-probe", client.Token(old[u.id]))
		cancel()
		var e *client.Error
		switch {
		case ctx.Err() != nil:
			return
		case errors.As(err, &e) && e.ID == "AUTH-KEY-UNKNOWN":
			refused++
		case errors.Is(err, client.ErrOutcomeUnknown) || (errors.As(err, &e) && e.Unavailable()) || (err != nil && !errors.As(err, &e)):
			unanswered++
		default:
			k.rep.Anomalies = append(k.rep.Anomalies, fmt.Sprintf("%s: a token of the retired key, sent after its retirement, got %v", u.id, err))
		}
	}
	k.logf("tokens of the retired key, sent after its retirement: %d refused, %d unanswered", refused, unanswered)
	k.rep.RetiredRefused = refused
}

// provisionKeys writes keys as the campaign's JWKS file and runs `worker
// provision --jwks` with it, as the operator does, again every 5 s until
// it succeeds; false when ctx ends first.
func (k *campaign) provisionKeys(ctx context.Context, keys ...jose.JSONWebKey) bool {
	if err := k.w.writeJWKS(keys...); err != nil {
		k.rep.FaultError = append(k.rep.FaultError, "key rotation: "+err.Error())
		return false
	}
	for {
		err := k.provision(ctx, "--jwks", k.w.jwksPath, "--issuer", issuer, "--audience", audience, "--verify", "zip215", "--rules", "2")
		if err == nil {
			k.logf("operator: worker provision --jwks with %d keys, --verify zip215 --rules 2", len(keys))
			return true
		}
		k.logf("operator: worker provision --jwks failed, again in 5s: %.200v", err)
		if !sleepCtx(ctx, 5*time.Second) {
			return false
		}
	}
}

// supervise restarts a program that exited by itself (not killed by the
// nemesis), once a second, and records that it did.
func (k *campaign) supervise(ctx context.Context) {
	for sleepCtx(ctx, time.Second) {
		k.restartExited()
	}
}

func (k *campaign) restartExited() {
	for _, m := range k.c.machines {
		for _, p := range []*process{m.nats, m.worker} {
			if gone, said := p.exited(); gone {
				k.logf("%s exited by itself; started again", p.name)
				k.rep.addExit(p.name, said)
				if p == m.worker && strings.Contains(said, "--reset-leases") {
					k.resetLeases(p.name)
				}
				p.kill()
				if err := p.start(); err != nil {
					k.logf("%s: %v", p.name, err)
				}
			}
		}
	}
}

// resetLeases does what the operator does when a worker says the lease
// bucket has not answered for long (nats-server left it without a leader:
// docs/reliability.md): `worker provision --reset-leases`, at most once a
// minute, reported as a repair.
func (k *campaign) resetLeases(who string) {
	if !k.lastReset.IsZero() && time.Since(k.lastReset) < time.Minute {
		return
	}
	k.lastReset = time.Now()
	at := time.Since(k.start)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if leader := k.leaseLeader(ctx); leader != "" {
		k.logf("operator: %s says the lease bucket is silent, but it has a leader (%s): no reset", who, leader)
		return
	}
	k.logf("operator: %s says the lease bucket is silent, and it has no leader; worker provision --reset-leases", who)
	repair := fmt.Sprintf("%.1fs: %s said the lease bucket had not answered for long; worker provision --reset-leases", at.Seconds(), who)
	if err := k.provision(ctx, "--reset-leases"); err != nil {
		repair += " failed: " + err.Error()
	}
	k.logf("operator: %s", repair)
	k.rep.Repairs = append(k.rep.Repairs, repair)
}

// leaseLeader is the lease bucket's stream's leader, as the provisioner
// sees it ("" when it has none, or does not answer within 10 s).
func (k *campaign) leaseLeader(ctx context.Context) string {
	nc, err := nats.Connect(k.c.natsURLs("passkeys-provisioner"), nats.CustomInboxPrefix("_INBOX_passkeys-provisioner"))
	if err != nil {
		return ""
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "KV_PASSKEYS_LEASES")
	if err != nil || st.CachedInfo().Cluster == nil {
		return ""
	}
	return st.CachedInfo().Cluster.Leader
}

// settle waits until every user can be read again, all faults healed.
func (k *campaign) settle(ctx context.Context) error {
	k.logf("waiting for every user to be served")
	k.restartExited()
	for _, m := range k.c.machines {
		if !m.nats.running() {
			if err := k.c.startNode(m); err != nil {
				return err
			}
		}
		if err := m.worker.start(); err != nil {
			return err
		}
	}
	// The supervisor goes on: a program may still exit by itself (a
	// worker that says the lease bucket is silent, and its repair).
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { k.supervise(sctx) })
	defer wg.Wait()
	defer stop()
	t0 := time.Now()
	for _, u := range k.w.users {
		for {
			// Recorded: the reads between the heal and the re-asks are
			// what shows a change lost with a power cut and made again.
			op := k.w.list(k.cfg.Clients, u)
			if op.Result.Status == StatusOK {
				break
			}
			if ctx.Err() != nil || time.Since(t0) > 3*time.Minute {
				return fmt.Errorf("%s not served 3 minutes after the faults: %s", u.id, op.Result.Err)
			}
		}
	}
	k.rep.Recovery = time.Since(t0)
	return nil
}

// resolve asks again, with the same Nats-Msg-Id, for every change: one
// whose first answer did not tell gets its outcome; one that had an
// answer must get the same bytes again.
func (k *campaign) resolve() {
	ops := slices.DeleteFunc(k.w.hist.snapshot(), func(op *Op) bool { return !op.isChange() })
	k.logf("asking again for %d changes", len(ops))
	users := map[string]*user{}
	for _, u := range k.w.users {
		users[u.id] = u
	}
	var mu sync.Mutex
	work := make(chan *Op)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for op := range work {
				again := *op
				k.w.do(&again, users[op.User])
				mu.Lock()
				k.rep.noteRepeat(op, &again)
				mu.Unlock()
			}
		})
	}
	for _, op := range ops {
		work <- op
	}
	close(work)
	wg.Wait()
}

// finalReads reads every user once more, after everything was resolved.
func (k *campaign) finalReads() {
	for _, u := range k.w.users {
		k.w.list(k.cfg.Clients, u)
	}
}

// writeFailure writes the seed, the history, the faults and porcupine's
// picture of the history into a folder, and says how to replay it.
func (k *campaign) writeFailure(ops []*Op, v *Verdict) (string, error) {
	dir := filepath.Join(k.cfg.Dir, "failure")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := writeHistory(filepath.Join(dir, "history.jsonl"), ops); err != nil {
		return dir, err
	}
	if err := k.rep.write(filepath.Join(dir, "report.json")); err != nil {
		return dir, err
	}
	if err := writeVisualization(filepath.Join(dir, "history.html"), v); err != nil {
		return dir, err
	}
	return dir, nil
}
